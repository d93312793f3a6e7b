"""Spiking YOLOv4-tiny neck (SPYv4), generalised to any number of scales.

Deepest feature ``f_{n-1}`` (C channels): 1x1 conv to C/2 (the "lateral"), then a 3x3 conv back to
C -> head of scale n-1. For each shallower scale i, from the deeper source (the lateral for
i = n-2, else the fused output of scale i+1): 1x1 conv to C_i/2, nearest upsample to f_i's size,
concatenate with f_i, 3x3 conv to C_i -> head of scale i. Every conv is an LTC-SN cell
(:class:`~spikeloc.neurons.SpikingConv2d`); all neck outputs are spikes, unless ``output_neuron``
names another neuron for the cells that feed the head (``top`` and ``fuse``), e.g. ``ltc_readout``:
the head then reads their analog membrane.

``upsample="current"`` (the reference) upsamples the 1x1 cell's synaptic current ``BN(conv(x))``
before its neuron, so that neuron (and its state) lives at the finer scale's size;
``"spikes"`` runs the neuron at the coarse size and upsamples its spikes.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...neurons import NeuronKind, SpikingConv2d
from ..backbones.base import sub_state

Upsample = Literal["current", "spikes"]


class SpikingYOLONeck(nn.Module):
    """Top-down spiking FPN of YOLOv4-tiny.

    Args:
        in_channels: channels of the backbone features, ordered by increasing stride.
        neuron: neuron of every cell (``ltc``, ``lif`` or ``alif``).
        neuron_kwargs: extra arguments for the neurons.
        upsample: ``"current"`` (reference) or ``"spikes"``, see the module docstring.
        output_neuron: neuron of the cells feeding the head (``None``: ``neuron``; ignored when
            ``neuron`` is ``ann``, whose twin has no membrane).

    ``forward(features, state)``: ``features`` = list of ``[B, C_i, H_i, W_i]`` (increasing stride)
    -> list of spikes ``[B, C_i, H_i, W_i]`` (same channels and sizes) and the state dict
    ``{"lateral", "top", "reduce": [n-1], "fuse": [n-1]}``.
    """

    def __init__(self, in_channels: Sequence[int], neuron: NeuronKind = "ltc",
                 neuron_kwargs: dict | None = None, upsample: Upsample = "current",
                 output_neuron: NeuronKind | None = None) -> None:
        super().__init__()
        if upsample not in ("current", "spikes"):
            raise ValueError(f"upsample must be 'current' or 'spikes', got {upsample!r}")
        self.upsample = upsample
        channels = [int(c) for c in in_channels]
        if not channels:
            raise ValueError("the neck needs at least one feature map")
        kwargs = dict(neuron=neuron, **(neuron_kwargs or {}))
        out_kwargs = dict(kwargs, neuron=neuron if neuron == "ann" else output_neuron or neuron)
        top, half = channels[-1], max(channels[-1] // 2, 1)
        self.lateral = SpikingConv2d(top, half, 1, **kwargs)
        self.top = SpikingConv2d(half, top, 3, **out_kwargs)
        reduce, fuse = [], []
        for i in range(len(channels) - 1):
            source = half if i == len(channels) - 2 else channels[i + 1]
            reduced = max(channels[i] // 2, 1)
            reduce.append(SpikingConv2d(source, reduced, 1, **kwargs))
            fuse.append(SpikingConv2d(reduced + channels[i], channels[i], 3, **out_kwargs))
        self.reduce, self.fuse = nn.ModuleList(reduce), nn.ModuleList(fuse)
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor], state: dict | None = None) -> tuple[list[Tensor], dict]:
        if len(features) != len(self.out_channels):
            raise ValueError(f"neck built for {len(self.out_channels)} scales, got {len(features)} features")
        n = len(features)
        reduce_state, fuse_state = sub_state(state, "reduce"), sub_state(state, "fuse")
        new_reduce: list = [None] * (n - 1)
        new_fuse: list = [None] * (n - 1)
        lateral, lateral_state = self.lateral(features[-1], sub_state(state, "lateral"))
        top, top_state = self.top(lateral, sub_state(state, "top"))
        outs: list[Tensor] = [top]
        source = lateral
        for i in reversed(range(n - 1)):
            upsampled, new_reduce[i] = self._reduce(i, source, features[i].shape[-2:],
                                                    sub_state(reduce_state, i))
            fused, new_fuse[i] = self.fuse[i](torch.cat((upsampled, features[i]), dim=1),
                                              sub_state(fuse_state, i))
            outs.insert(0, fused)
            source = fused
        return outs, {"lateral": lateral_state, "top": top_state, "reduce": new_reduce, "fuse": new_fuse}

    def _reduce(self, i: int, source: Tensor, size: torch.Size, state: dict | None) -> tuple[Tensor, dict]:
        """1x1 cell ``i`` on ``source`` ``[B, C, h, w]`` -> spikes ``[B, C_i / 2, *size]`` and its state."""
        cell = self.reduce[i]
        if self.upsample == "spikes":
            spikes, state = cell(source, state)
            return F.interpolate(spikes, size=size, mode="nearest"), state
        current = F.interpolate(cell.bn(cell.conv(source)), size=size, mode="nearest")
        return cell.neuron(current, state)
