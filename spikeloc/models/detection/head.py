"""Non-spiking YOLO head: per scale a 1x1 conv to ``A * (5 + K)`` outputs.

``readout="last"``: the output of a step is that step's 1x1 conv (the caller reads the last step).
``readout="leaky"``: the 1x1 outputs are integrated over steps by a
:class:`~spikeloc.neurons.LeakyReadout` (``u_t = (1 - tau) u_{t-1} + tau z_t``).
``readout="mean"``: the running mean of the 1x1 outputs over the steps so far; the conv is affine,
so with spiking neck outputs this is the head of their spike counts (rates).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ...neurons import LeakyReadout
from ..backbones.base import sub_state

Readout = Literal["last", "leaky", "mean"]
HeadInit = Literal["default", "priors", "xavier_normal"]


def mean_readout(z: Tensor, state: dict | None) -> tuple[Tensor, dict]:
    """Running mean of ``z`` ``[B, ...]`` over the steps so far; state ``{"sum", "count" [B, 1, ...]}``,
    fresh (None, or zeroed per sample by ``reset_state``) at the first step."""
    total = z if state is None else state["sum"] + z
    count = torch.ones((z.shape[0],) + (1,) * (z.dim() - 1), dtype=z.dtype, device=z.device)
    count = count if state is None else state["count"] + count
    return total / count, {"sum": total, "count": count}


class YOLOHead(nn.Module):
    """Args:
        in_channels: channels of the neck outputs per scale.
        num_anchors: anchors per scale.
        num_classes: K.
        readout: ``"last"``, ``"leaky"`` or ``"mean"`` (see the module docstring).
        strides, image_size: when given, the objectness and class biases start at YOLOv5's priors
            (about 8 objects per image, class prob ~0.6/K) so the loss starts small.

    :meth:`initialise` re-initialises the 1x1 convs another way.

    ``forward(features, state)``: ``features`` ``[B, C_i, H_i, W_i]`` per scale -> raw outputs
    ``[B, A_i, H_i, W_i, 5 + K]`` per scale and state (per scale ``{"u"}`` for ``leaky``, ``{"sum",
    "count"}`` for ``mean``, ``None`` for ``last``).
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 readout: Readout = "last", strides: Sequence[int] | None = None, image_size: int = 416) -> None:
        super().__init__()
        if readout not in ("last", "leaky", "mean"):
            raise ValueError(f"readout must be 'last', 'leaky' or 'mean', got {readout!r}")
        if len(in_channels) != len(num_anchors):
            raise ValueError("one anchor count per scale is needed")
        self.num_classes, self.num_anchors, self.readout = num_classes, list(num_anchors), readout
        outputs = [a * (5 + num_classes) for a in num_anchors]
        self.convs = nn.ModuleList(nn.Conv2d(c, o, 1) for c, o in zip(in_channels, outputs))
        self.readouts = nn.ModuleList(LeakyReadout(o) for o in outputs) if readout == "leaky" else None
        self.strides, self.image_size = strides, image_size
        if strides is not None:
            self._init_biases()

    @torch.no_grad()
    def initialise(self, how: HeadInit) -> None:
        """Re-initialise the 1x1 convs: ``"default"`` (PyTorch's ``Conv2d`` init, weights and biases
        uniform in +-1/sqrt(fan_in): the reference), ``"priors"`` (PyTorch's weights, the bias priors;
        needs ``strides``) or ``"xavier_normal"`` (Xavier-normal weights, zero biases)."""
        if how not in ("default", "priors", "xavier_normal") or (how == "priors" and self.strides is None):
            raise ValueError(f"head init must be 'default', 'priors' (with strides) or 'xavier_normal', got {how!r}")
        for conv in self.convs:
            if how == "xavier_normal":
                nn.init.xavier_normal_(conv.weight)
                nn.init.zeros_(conv.bias)
            else:
                conv.reset_parameters()
        if how == "priors":
            self._init_biases()

    def _init_biases(self) -> None:
        image_size = self.image_size
        for conv, anchors, stride in zip(self.convs, self.num_anchors, self.strides):
            bias = conv.bias.detach().view(anchors, 5 + self.num_classes)
            bias[:, 4] = math.log(8 / (image_size / stride) ** 2)
            bias[:, 5:] = math.log(0.6 / max(self.num_classes - 0.99, 0.01))

    def forward(self, features: Sequence[Tensor], state: list | None = None) -> tuple[list[Tensor], list]:
        outputs, new_state = [], []
        for i, (feature, conv) in enumerate(zip(features, self.convs)):
            z = conv(feature)  # [B, A * (5 + K), H, W]
            if self.readouts is not None:
                z, scale_state = self.readouts[i](z, sub_state(state, i))
            elif self.readout == "mean":
                z, scale_state = mean_readout(z, sub_state(state, i))
            else:
                scale_state = None
            batch, _, height, width = z.shape
            outputs.append(z.view(batch, self.num_anchors[i], 5 + self.num_classes, height, width)
                           .permute(0, 1, 3, 4, 2))
            new_state.append(scale_state)
        return outputs, new_state
