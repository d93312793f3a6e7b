"""Training on streams: the neuron state carried from one batch to the next.

When a long recording is cut into consecutive windows and batch ``b + 1`` holds the windows that
follow those of batch ``b`` row by row (``spikeloc.streaming.interleave`` and
``datamodules.events.streams`` build such batches), the network should continue where it stopped instead
of starting fresh. FPTT fits this naturally: the carried state is detached, the past is never
unrolled, memory stays that of one window. Mix :class:`CarryStateMixin` in front of any
``OnlineModule``::

    class StreamingClassifier(CarryStateMixin, SpikingClassifier): ...

:class:`StreamingDetector` is the detector so built, for configs (``GEN1DataModule`` with
``sequential: true``): trained and evaluated on consecutive windows, the windows without a label left
out of the loss and the metric.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spikeloc.neurons import detach_state, map_state, reset_state
from .detection import Batch, SpikingDetector


def _batch_size(state: Any) -> int | None:
    sizes: list[int] = []
    map_state(lambda leaf: sizes.append(leaf.shape[0]) or leaf, state)
    return sizes[0] if sizes else None


class CarryStateMixin:
    """Carry the state across consecutive batches.

    Training: the first step of every batch starts from the previous training batch's last state,
    detached, with the rows whose reset flag is True zeroed (``reset_state``). A batch gives its
    bool ``[B]`` flags as ``batch["reset"]`` (dict batches) or as a third element (tuple batches);
    without flags every row continues. A batch of another size, and the first batch of every
    epoch (``batch_idx`` 0), start fresh; a checkpoint keeps the carried state, so a run resumed in
    the middle of an epoch continues its streams as the uninterrupted run would.

    Evaluation: a batch with reset flags continues the previous evaluation batch the same way (every
    validation or test epoch starts fresh); a batch without flags starts fresh (independent samples).
    """

    _carried: Any = None  # the last training state
    _incoming: Any = None  # the state the training batch under way starts from
    _eval_carried: Any = None
    _eval_incoming: Any = None
    _eval_carries = False  # the evaluation batch under way has reset flags

    @staticmethod
    def reset_flags(batch: Any) -> Tensor | None:
        """The batch's bool ``[B]`` "starts a new recording" flags, if it has any."""
        if isinstance(batch, dict):
            return batch.get("reset")
        if isinstance(batch, (tuple, list)) and len(batch) > 2:
            return batch[2]
        return None

    def _continued(self, state: Any, batch: Any) -> Any:
        """``state`` detached, on this device, with the batch's reset rows zeroed (None: fresh)."""
        state, flags = detach_state(state), self.reset_flags(batch)
        if state is not None:
            state = map_state(lambda leaf: leaf.to(self.device), state)
        if state is not None and flags is not None and _batch_size(state) == len(flags):
            state = reset_state(state, flags.to(self.device))
        return state

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._incoming = self._continued(self._carried if batch_idx else None, batch)
        return super().training_step(batch, batch_idx)

    def _start_evaluation_batch(self, batch: Any) -> None:
        self._eval_carries = self.reset_flags(batch) is not None
        self._eval_incoming = self._continued(self._eval_carried, batch) if self._eval_carries else None

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        self._start_evaluation_batch(batch)
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        self._start_evaluation_batch(batch)
        return super().test_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_carried = None
        super().on_validation_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_carried = None
        super().on_test_epoch_start()

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[Any, Any]:
        if not self.training and not self._eval_carries:
            return super().forward_step(x_t, state)
        incoming = "_incoming" if self.training else "_eval_incoming"
        if state is None and getattr(self, incoming) is not None:  # the batch's first step
            carried = getattr(self, incoming)
            setattr(self, incoming, None)
            if _batch_size(carried) == x_t.shape[0]:
                state = carried
        output, state = super().forward_step(x_t, state)
        setattr(self, "_carried" if self.training else "_eval_carried", state)
        return output, state

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["carried_state"] = detach_state(self._carried)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._carried = checkpoint.get("carried_state")


class StreamingDetector(CarryStateMixin, SpikingDetector):
    """:class:`SpikingDetector` on consecutive windows with the state carried (training and evaluation).

    Rows whose window has no label (``batch["labelled"]`` False: GEN1's sequential windows between
    labels, idle rows) still move their state on but are left out of the loss and of the metric.
    Takes every argument of :class:`SpikingDetector`.
    """

    _rows: list[int] | None = None  # the labelled rows of the training batch under way (None: all)

    @staticmethod
    def labelled_rows(batch: Batch) -> list[int] | None:
        """Indices of the batch's labelled rows; None when every row is (or the batch does not say)."""
        flags = batch.get("labelled") if isinstance(batch, dict) else None
        if flags is None:
            return None
        rows = [row for row, labelled in enumerate(flags.tolist()) if labelled]
        return None if len(rows) == len(flags) else rows

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        self._rows = self.labelled_rows(batch)
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._rows = None

    def step_loss(self, output: list[Tensor], batch: Batch) -> dict[str, Tensor]:
        if self._rows is None:
            return super().step_loss(output, batch)
        if not self._rows:  # nothing to learn in this batch: a zero loss (the update is FPTT's penalty alone)
            return {"loss": sum(raw.sum() for raw in output) * 0.0}
        index = torch.tensor(self._rows, dtype=torch.long, device=output[0].device)
        kept = {**batch, "targets": [batch["targets"][row] for row in self._rows]}
        return super().step_loss([raw.index_select(0, index) for raw in output], kept)

    def _eval_step(self, batch: Batch, stage: str, rows: list[int] | None = None) -> dict[str, Any]:
        return super()._eval_step(batch, stage, self.labelled_rows(batch) if rows is None else rows)
