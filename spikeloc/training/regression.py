"""Spiking sequence regression on the shared online loop (the paper's Add task).

The network's read-out (``forward_head``) predicts ``y_t`` at every step; the step loss is the
mean squared error against the per-step target ``y [B, T]`` / ``[B, T, out]`` (or one final
target ``y [B]``, compared at every weighted step). Evaluation reports the MSE of the last step.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import timm
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanSquaredError

import spikeloc.models  # noqa: F401  (registers the spiking models with timm)
from spikeloc.neurons import LeakyReadout
from .loop import OnlineModule
from .time_loop import present


class SpikingRegressor(OnlineModule):
    """A timm-registered spiking model (``srnn_ltc`` by default) + MSE at every weighted step.

    Args:
        model: registered model name; model_kwargs: its extra arguments (``hidden`` ...).
        readout: ``leaky`` (default, as the reference: a non-spiking leaky integrator with learned
            time constants on the linear read-out, so the prediction has memory) or ``linear``.
        num_classes: number of regression outputs (linked from the datamodule; 1 for the Add task).
        in_channels: inputs per step (linked from the datamodule).
        **kwargs: the loop's settings, see :class:`OnlineModule`.
    """

    def __init__(self, model: str = "srnn_ltc", num_classes: int = 1, in_channels: int = 2,
                 model_kwargs: dict[str, Any] | None = None, readout: Literal["linear", "leaky"] = "leaky",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if readout not in ("linear", "leaky"):
            raise ValueError(f"readout must be 'linear' or 'leaky', got {readout!r}")
        self.net = timm.create_model(model, num_classes=num_classes, in_chans=in_channels, **(model_kwargs or {}))
        self.readout = LeakyReadout(num_classes) if readout == "leaky" else None
        self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError()
        self._step = 0  # the step whose target the next step_loss compares with

    def inputs(self, batch: tuple[Tensor, Tensor]) -> tuple[Callable[[int], Tensor], int]:
        input_at, num_steps = present(batch[0], self.num_steps)
        self._step = 0

        def at(t: int) -> Tensor:
            self._step = t
            return input_at(t)
        return at, num_steps

    def forward_step(self, x_t: Tensor, state: dict | None) -> tuple[Tensor, dict]:
        """``x_t`` ``[B, in]`` -> prediction ``[B, out]``; state ``{"net", "readout"}``."""
        state = state or {}
        features, net_state = self.call_step(self.net, x_t, state.get("net"))
        y = self.net.forward_head(features)
        readout_state = None
        if self.readout is not None:
            y, readout_state = self.readout(y, state.get("readout"))
        return y, {"net": net_state, "readout": readout_state}

    def target_at(self, y: Tensor, t: int) -> Tensor:
        """``[B, out]`` target of step ``t``: ``y`` is per step, ``[B, T]`` (one output) or
        ``[B, T, out]``, or one final target ``[B]`` used at every step."""
        if y.dim() == 1:
            return y.unsqueeze(1).to(self.dtype)
        y = y[:, t]
        return (y.unsqueeze(1) if y.dim() == 1 else y).to(self.dtype)

    def step_loss(self, output: Tensor, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.mse_loss(output, self.target_at(batch[1], self._step))}

    def spiking_network(self) -> nn.Module:
        return self.net

    def _evaluate(self, batch: tuple[Tensor, Tensor], metric: MeanSquaredError, stage: str) -> None:
        outputs = self.run_sequence(batch)
        metric.update(outputs[-1], self.target_at(batch[1], len(outputs) - 1))
        self.log(f"{stage}/mse", metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_mse, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_mse, "test")
