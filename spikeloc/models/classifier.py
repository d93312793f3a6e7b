"""Small spiking classification networks that follow the backbone contract.

``ltc_convnet``: stride-2 LTC-SN conv cells for frames ``[B, C, H, W]``.
``srnn_ltc``: recurrent dense LTC-SN layers with adaptive thresholds for vectors ``[B, D]``
(sequential pixels, the paper's S-MNIST setting).
Both: ``forward(x_t, state=None) -> (features, state)``, ``forward_head(features) -> logits``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from timm.models import build_model_with_cfg, register_model
from torch import Tensor, nn

from spikeloc.neurons import LTCDense, NeuronKind, SpikingConv2d


class LTCConvNet(nn.Module):
    """Stack of stride-2 spiking conv cells; features at strides 2, 4, 8, ..."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 64, 128),
                 width: float = 1.0, neuron: NeuronKind = "ltc", **neuron_kwargs) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in channels]
        ins = [in_chans] + widths[:-1]
        self.cells = nn.ModuleList(SpikingConv2d(i, o, 3, 2, neuron=neuron, **neuron_kwargs)
                                   for i, o in zip(ins, widths))
        self.out_channels, self.strides = widths, [2 ** (i + 1) for i in range(len(widths))]
        self.num_features = widths[-1]
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, state: list | None = None) -> tuple[list[Tensor], list]:
        """``x`` ``[B, C, H, W]`` -> spikes ``[B, C_i, H / s_i, W / s_i]`` per cell."""
        state = state or [None] * len(self.cells)
        features, new_state = [], []
        for cell, cell_state in zip(self.cells, state):
            x, cell_state = cell(x, cell_state)
            features.append(x)
            new_state.append(cell_state)
        return features, new_state

    def forward_head(self, features: list[Tensor]) -> Tensor:
        """Mean spike rate of the deepest map -> logits ``[B, num_classes]``."""
        return self.fc(features[-1].mean(dim=(2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


class LTCRecurrentNet(nn.Module):
    """Recurrent dense LTC-SN layers (adaptive thresholds) over vector inputs ``[B, D]``."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, hidden: Sequence[int] = (256,),
                 recurrent: bool = True, adaptive: bool = True, **neuron_kwargs) -> None:
        super().__init__()
        ins = [in_chans] + list(hidden[:-1])
        self.layers = nn.ModuleList(LTCDense(i, o, recurrent, adaptive, **neuron_kwargs)
                                    for i, o in zip(ins, hidden))
        self.out_channels, self.strides = list(hidden), [1] * len(hidden)
        self.num_features, self.num_classes = hidden[-1], num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, state: list | None = None) -> tuple[list[Tensor], list]:
        """``x`` ``[B, D]`` -> spikes ``[B, N_i]`` per layer."""
        state = state or [None] * len(self.layers)
        features, new_state = [], []
        for layer, layer_state in zip(self.layers, state):
            x, layer_state = layer(x, layer_state)
            features.append(x)
            new_state.append(layer_state)
        return features, new_state

    def forward_head(self, features: list[Tensor]) -> Tensor:
        return self.fc(features[-1])

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def _cfg(**kwargs) -> dict:
    # No url or hub id: weights come only from a local file (pretrained_cfg_overlay=dict(file=...)).
    return {"url": "", "num_classes": 10, "input_size": (1, 32, 32), "classifier": "fc", **kwargs}


default_cfgs = {"ltc_convnet": _cfg(), "srnn_ltc": _cfg(input_size=(1, 1, 1))}


@register_model
def ltc_convnet(pretrained: bool = False, **kwargs) -> LTCConvNet:
    """Small LTC-SN conv net (3 stride-2 cells) for quick image / event-frame classification."""
    return build_model_with_cfg(LTCConvNet, "ltc_convnet", pretrained, **kwargs)


@register_model
def srnn_ltc(pretrained: bool = False, **kwargs) -> LTCRecurrentNet:
    """Recurrent dense LTC-SN net with adaptive thresholds for vector sequences (S-MNIST)."""
    return build_model_with_cfg(LTCRecurrentNet, "srnn_ltc", pretrained, **kwargs)
