"""Training on streams: the neuron state carried from one training batch to the next.

When a long recording is cut into consecutive windows and batch ``b + 1`` holds the windows that
follow those of batch ``b`` row by row (``spikeloc.streaming.interleave`` builds such batches),
the network should continue where it stopped instead of starting fresh. FPTT fits this
naturally: the carried state is detached, the past is never unrolled, memory stays that of one
window. Mix :class:`CarryStateMixin` in front of any ``OnlineModule``::

    class StreamingClassifier(CarryStateMixin, SpikingClassifier): ...
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from spikeloc.neurons import detach_state, map_state, reset_state


def _batch_size(state: Any) -> int | None:
    sizes: list[int] = []
    map_state(lambda leaf: sizes.append(leaf.shape[0]) or leaf, state)
    return sizes[0] if sizes else None


class CarryStateMixin:
    """Carry the state across training batches (evaluation is unaffected).

    The first step of every training batch starts from the previous training batch's last state,
    detached, with the rows whose reset flag is True zeroed (``reset_state``). A batch gives its
    bool ``[B]`` flags as ``batch["reset"]`` (dict batches) or as a third element (tuple batches);
    without flags every row continues. A batch of another size, and the first batch of every
    epoch, start fresh.
    """

    _carried: Any = None
    _incoming: Any = None

    @staticmethod
    def reset_flags(batch: Any) -> Tensor | None:
        """The batch's bool ``[B]`` "starts a new recording" flags, if it has any."""
        if isinstance(batch, dict):
            return batch.get("reset")
        if isinstance(batch, (tuple, list)) and len(batch) > 2:
            return batch[2]
        return None

    def on_train_epoch_start(self) -> None:
        self._carried = None
        super().on_train_epoch_start()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        state, flags = detach_state(self._carried), self.reset_flags(batch)
        if state is not None and flags is not None and _batch_size(state) == len(flags):
            state = reset_state(state, flags.to(self.device))
        self._incoming = state
        return super().training_step(batch, batch_idx)

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[Any, Any]:
        if not self.training:
            return super().forward_step(x_t, state)
        if state is None and self._incoming is not None:  # the batch's first step
            incoming, self._incoming = self._incoming, None
            if _batch_size(incoming) == x_t.shape[0]:
                state = incoming
        output, state = super().forward_step(x_t, state)
        self._carried = state
        return output, state
