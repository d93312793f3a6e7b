"""Small spiking classification networks that follow the backbone contract (registered in ``registry.py``).

``ltc_convnet``: stride-2 LTC-SN conv cells for frames ``[B, C, H, W]``.
``srnn_ltc``: recurrent dense LTC-SN layers with adaptive thresholds for vectors ``[B, D]``
(sequential pixels, the paper's S-MNIST setting).
Both: ``forward(x_t, state=None) -> (features, state)``, ``forward_head(features) -> logits``.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from spikeloc.neurons import LTCDense, NeuronKind, SpikingConv2d
from .base import SpikingBackbone


def _run_layers(layers: nn.ModuleList, x: Tensor, state: list | None) -> tuple[list[Tensor], list]:
    """Feed ``x`` through stateful layers in order; every layer's output is a feature."""
    state = state or [None] * len(layers)
    features, new_state = [], []
    for layer, layer_state in zip(layers, state):
        x, layer_state = layer(x, layer_state)
        features.append(x)
        new_state.append(layer_state)
    return features, new_state


class LTCConvNet(SpikingBackbone):
    """Stack of stride-2 spiking conv cells; features at strides 2, 4, 8, ..."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 64, 128),
                 width: float = 1.0, neuron: NeuronKind = "ltc", **neuron_kwargs) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in channels]
        ins = [in_chans] + widths[:-1]
        self.cells = nn.ModuleList(SpikingConv2d(i, o, 3, 2, neuron=neuron, **neuron_kwargs)
                                   for i, o in zip(ins, widths))
        self.in_chans, self.out_channels = in_chans, widths
        self.strides = [2 ** (i + 1) for i in range(len(widths))]
        self.init_head(num_classes)

    def forward(self, x: Tensor, state: list | None = None) -> tuple[list[Tensor], list]:
        """``x`` ``[B, C, H, W]`` -> spikes ``[B, C_i, H / s_i, W / s_i]`` per cell."""
        return _run_layers(self.cells, x, state)


class LTCRecurrentNet(SpikingBackbone):
    """Recurrent dense LTC-SN layers (adaptive thresholds) over vector inputs ``[B, D]``."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, hidden: Sequence[int] = (256,),
                 recurrent: bool = True, adaptive: bool = True, **neuron_kwargs) -> None:
        super().__init__()
        ins = [in_chans] + list(hidden[:-1])
        self.layers = nn.ModuleList(LTCDense(i, o, recurrent, adaptive, **neuron_kwargs)
                                    for i, o in zip(ins, hidden))
        self.in_chans, self.out_channels, self.strides = in_chans, list(hidden), [1] * len(hidden)
        self.init_head(num_classes)

    def forward(self, x: Tensor, state: list | None = None) -> tuple[list[Tensor], list]:
        """``x`` ``[B, D]`` -> spikes ``[B, N_i]`` per layer."""
        return _run_layers(self.layers, x, state)

    def forward_head(self, features: list[Tensor], pre_logits: bool = False) -> Tensor:
        return features[-1] if pre_logits else self.fc(features[-1])
