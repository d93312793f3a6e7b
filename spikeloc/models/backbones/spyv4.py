"""SPYv4 backbone: the spiking CSPDarknet-tiny of YOLOv4-tiny (the paper's SPYv4), every conv an LTC-SN cell.

Layers (channels at ``width=1``; strides relative to the input):

    conv1 3x3/2 32 -> conv2 3x3/2 64                                  stride 4
    csp1 (64 -> 128), csp2 (128 -> 256), csp3 (256 -> 512)           strides 8, 16, 32
    conv3 3x3 512                                                     stride 32

A CSP block with ``C`` channels: ``a = conv1(x)`` (3x3, C); ``b = second half of a`` (darknet's
route group 1 of 2); ``b1 = conv2(b)``, ``b2 = conv3(b1)`` (3x3, C/2); ``t = conv4([b2, b1])``
(1x1, C); output ``maxpool2x2([a, t])`` with 2C channels at twice the input stride. With
``shortcut=True`` the spikes ``b1`` are added to the synaptic current of ``conv3`` (a residual
inside the block, joined before the spike as in the spiking ResNets).

Features, as YOLOv4-tiny's heads read them: stride 8 is ``t`` of ``csp2`` (128), stride 16 is
``t`` of ``csp3`` (256, darknet layer 23), stride 32 is ``conv3`` (512).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import Tensor, nn

from spikeloc.neurons import NeuronKind, SpikingConv2d

from .base import SpikingBackbone, State, cell_with_shortcut, check_out_strides, scale_channels, sub_state

FEATURE_STRIDES = (8, 16, 32)


class CSPBlock(nn.Module):
    """CSPDarknet-tiny block: ``[B, C_in, H, W]`` -> (output ``[B, 2C, H/2, W/2]``,
    transition feature ``t`` ``[B, C, H, W]``, state)."""

    def __init__(self, in_channels: int, channels: int, cell: partial, shortcut: bool = False) -> None:
        super().__init__()
        half = channels // 2
        self.shortcut = shortcut
        self.conv1 = cell(in_channels, channels, 3)
        self.conv2 = cell(half, half, 3)
        self.conv3 = cell(half, half, 3)
        self.conv4 = cell(channels, channels, 1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, Tensor, dict]:
        a, s1 = self.conv1(x, sub_state(state, "conv1"))
        b1, s2 = self.conv2(a[:, a.shape[1] // 2:], sub_state(state, "conv2"))
        if self.shortcut:
            b2, s3 = cell_with_shortcut(self.conv3, b1, b1, sub_state(state, "conv3"))
        else:
            b2, s3 = self.conv3(b1, sub_state(state, "conv3"))
        t, s4 = self.conv4(torch.cat([b2, b1], dim=1), sub_state(state, "conv4"))
        return torch.cat([self.pool(a), self.pool(t)], dim=1), t, {"conv1": s1, "conv2": s2, "conv3": s3, "conv4": s4}


class SPYv4Tiny(SpikingBackbone):
    """Spiking CSPDarknet-tiny. Only what ``max(out_strides)`` needs is built.

    ``x_t`` ``[B, in_chans, H, W]`` -> features ``[B, out_channels[i], H / strides[i], W / strides[i]]``
    (H, W multiples of 32); state ``{"conv1", "conv2", "csp1", "csp2", "csp3", "conv3"}``.
    ``neuron: ann`` builds the non-spiking twin; ``stem_neuron`` (e.g. ``ann``: an analog first
    layer) overrides the neuron of ``conv1``; ``shortcut`` adds the residual inside every CSP block.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, width: float = 1.0, neuron: NeuronKind = "ltc",
                 out_strides: Sequence[int] = (16, 32), shortcut: bool = False, stem_neuron: NeuronKind | None = None,
                 **neuron_kwargs) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.strides = list(check_out_strides(out_strides, FEATURE_STRIDES))
        cell = partial(SpikingConv2d, neuron=neuron, **neuron_kwargs)
        c32, c64 = scale_channels(32, width), scale_channels(64, width)
        self.conv1 = SpikingConv2d(in_chans, c32, 3, 2, neuron=stem_neuron or neuron, **neuron_kwargs)
        self.conv2 = cell(c32, c64, 3, 2)
        # the block that produces the stride-s feature runs at stride s: csp2 -> 8, csp3 -> 16
        self.block_names = ["csp1", "csp2", "csp3"][: 2 + (self.strides[-1] > 8)]
        channels = c64
        feature_channels = {}
        for index, name in enumerate(self.block_names):
            planes = scale_channels(64 * 2**index, width)
            self.add_module(name, CSPBlock(channels, planes, cell, shortcut))
            feature_channels[2 ** (index + 2)] = planes
            channels = 2 * planes
        if self.strides[-1] == 32:
            feature_channels[32] = scale_channels(512, width)
            self.conv3 = cell(channels, feature_channels[32], 3)
        self.out_channels = [feature_channels[s] for s in self.strides]
        self.init_head(num_classes)

    def forward(self, x_t: Tensor, state: State = None) -> tuple[list[Tensor], dict]:
        """One time step: ``[B, in_chans, H, W]`` -> (list of spike maps, new state)."""
        x, s1 = self.conv1(x_t, sub_state(state, "conv1"))
        x, s2 = self.conv2(x, sub_state(state, "conv2"))
        new_state: dict = {"conv1": s1, "conv2": s2}
        by_stride: dict[int, Tensor] = {}
        for index, name in enumerate(self.block_names):
            x, by_stride[2 ** (index + 2)], new_state[name] = getattr(self, name)(x, sub_state(state, name))
        if self.strides[-1] == 32:
            by_stride[32], new_state["conv3"] = self.conv3(x, sub_state(state, "conv3"))
        return [by_stride[s] for s in self.strides], new_state
