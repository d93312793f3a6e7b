"""Spiking ResNets built from LTC-SN conv cells (``ltc_resnet18/34/50``).

Layout and module names follow torchvision/timm ResNets so an ANN checkpoint maps onto the
cells: ANN ``convN`` + ``bnN`` become one ``SpikingConv2d`` cell named ``convN`` (with ``.conv``,
``.bn``, ``.neuron``); ``downsample`` (1x1 conv + BN) and ``fc`` keep their names.

Residual form: the shortcut is added to the **synaptic current** of the block's last cell,
before its neuron (``s = neuron(BN(conv(x)) + shortcut)``), mirroring the ANN's add-then-ReLU.
The identity shortcut adds the block's input spikes; the projection shortcut adds the analog
``downsample`` output. Every block therefore emits binary spikes (no SEW-style spike sums).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

from torch import Tensor, nn

from spikeloc.neurons import NeuronKind, SpikingConv2d

from .base import SpikingBackbone, State, cell_with_shortcut, check_out_strides, scale_channels, sub_state

CellFactory = Callable[..., SpikingConv2d]
STAGE_STRIDES = (4, 8, 16, 32)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """torchvision's ``downsample``: 1x1 conv + BN when the shape changes, else ``None``."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 cells; ``[B, C_in, H, W]`` -> spikes ``[B, C, H / stride, W / stride]``."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, cell: CellFactory) -> None:
        super().__init__()
        self.conv1 = cell(in_channels, channels, 3, stride)
        self.conv2 = cell(channels, channels, 3, 1)
        self.downsample = _projection(in_channels, channels, stride)

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, dict]:
        shortcut = x if self.downsample is None else self.downsample(x)
        y, s1 = self.conv1(x, sub_state(state, "conv1"))
        y, s2 = cell_with_shortcut(self.conv2, y, shortcut, sub_state(state, "conv2"))
        return y, {"conv1": s1, "conv2": s2}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4) cells; ``[B, C_in, H, W]`` -> ``[B, 4C, H / s, W / s]``."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, cell: CellFactory) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = cell(in_channels, channels, 1, 1)
        self.conv2 = cell(channels, channels, 3, stride)
        self.conv3 = cell(channels, out_channels, 1, 1)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, dict]:
        shortcut = x if self.downsample is None else self.downsample(x)
        y, s1 = self.conv1(x, sub_state(state, "conv1"))
        y, s2 = self.conv2(y, sub_state(state, "conv2"))
        y, s3 = cell_with_shortcut(self.conv3, y, shortcut, sub_state(state, "conv3"))
        return y, {"conv1": s1, "conv2": s2, "conv3": s3}


class LTCResNet(SpikingBackbone):
    """Spiking ResNet backbone: 7x7/2 stem cell, 3x3/2 max-pool, four stages (strides 4..32).

    Only the stages up to ``max(out_strides)`` are built. ``x_t`` ``[B, in_chans, H, W]`` ->
    features ``[B, out_channels[i], H / strides[i], W / strides[i]]``; state
    ``{"conv1": cell state, "layer1": [block states], ...}``.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], in_chans: int = 3,
                 num_classes: int = 1000, width: float = 1.0, neuron: NeuronKind = "ltc",
                 out_strides: Sequence[int] = (8, 16, 32), **neuron_kwargs) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.out_indices = [STAGE_STRIDES.index(s) for s in check_out_strides(out_strides, STAGE_STRIDES)]
        cell = partial(SpikingConv2d, neuron=neuron, **neuron_kwargs)
        channels = scale_channels(64, width)
        self.conv1 = cell(in_chans, channels, 7, 2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage_names: list[str] = []
        stage_channels: list[int] = []
        for index in range(self.out_indices[-1] + 1):
            planes = scale_channels(64 * 2**index, width)
            stage = [block(channels, planes, 1 if index == 0 else 2, cell)]
            channels = planes * block.expansion
            stage += [block(channels, planes, 1, cell) for _ in range(layers[index] - 1)]
            self.stage_names.append(f"layer{index + 1}")
            self.add_module(self.stage_names[-1], nn.Sequential(*stage))
            stage_channels.append(channels)
        self.out_channels = [stage_channels[i] for i in self.out_indices]
        self.strides = [STAGE_STRIDES[i] for i in self.out_indices]
        self.init_head(num_classes)

    def forward(self, x_t: Tensor, state: State = None) -> tuple[list[Tensor], dict]:
        """One time step: ``[B, in_chans, H, W]`` -> (list of spike maps, new state)."""
        x, stem_state = self.conv1(x_t, sub_state(state, "conv1"))
        x = self.maxpool(x)
        new_state: dict = {"conv1": stem_state}
        features: list[Tensor] = []
        for index, name in enumerate(self.stage_names):
            stage_state = sub_state(state, name)
            new_state[name] = []
            for position, block in enumerate(getattr(self, name)):
                x, block_state = block(x, sub_state(stage_state, position))
                new_state[name].append(block_state)
            if index in self.out_indices:
                features.append(x)
        return features, new_state


# name -> (block, blocks per stage); built by the timm registry (``registry.py``).
RESNET_ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "ltc_resnet18": (BasicBlock, (2, 2, 2, 2)),
    "ltc_resnet34": (BasicBlock, (3, 4, 6, 3)),
    "ltc_resnet50": (Bottleneck, (3, 4, 6, 3)),
}
