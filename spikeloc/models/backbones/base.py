"""What every spiking backbone shares: the classification head and channel scaling.

The backbone contract (docs/detection.md): ``forward(x_t, state=None) -> (features, state)`` advances ONE
time step; ``x_t`` is ``[B, in_chans, H, W]`` and ``features`` a list of spike tensors
``[B, out_channels[i], H / strides[i], W / strides[i]]`` ordered by increasing stride.
``forward_head(features) -> [B, num_classes]`` is a non-spiking average-pool + linear read-out
of the deepest feature, used for classification pretraining.
"""
from __future__ import annotations

from typing import Any, Sequence

from timm.models import FeatureInfo
from torch import Tensor, nn

State = Any


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def sub_state(state: State, key: Any) -> State:
    """``state[key]``, or ``None`` (fresh) when the whole state is fresh."""
    return None if state is None else state[key]


def check_out_strides(out_strides: Sequence[int], available: Sequence[int]) -> tuple[int, ...]:
    """Validate requested output strides; returns them sorted and de-duplicated."""
    strides = tuple(sorted(set(int(s) for s in out_strides)))
    unknown = [s for s in strides if s not in available]
    if not strides or unknown:
        raise ValueError(f"out_strides {tuple(out_strides)} invalid; choose from {tuple(available)}")
    return strides


def cell_with_shortcut(cell: nn.Module, x: Tensor, shortcut: Tensor, state: State) -> tuple[Tensor, dict]:
    """Run a ``SpikingConv2d`` cell with ``shortcut`` added to its synaptic current.

    ``i = BN(conv(x)) + shortcut`` is fed to the cell's neuron, so the residual joins before the
    spike non-linearity (as the ANN adds before its ReLU) and the output stays binary.
    ``x`` ``[B, C_in, H, W]``, ``shortcut`` ``[B, C_out, H', W']`` -> spikes ``[B, C_out, H', W']``.
    """
    return cell.neuron(cell.bn(cell.conv(x)) + shortcut, state)


class SpikingBackbone(nn.Module):
    """Base class: subclasses build their layers, set ``out_channels``/``strides``, then call
    :meth:`init_head` and implement ``forward(x_t, state=None) -> (features, state)``."""

    out_channels: list[int]
    strides: list[int]

    def init_head(self, num_classes: int) -> None:
        """Create ``fc``: linear read-out of the pooled deepest feature (identity for 0 classes), and
        timm's ``feature_info`` of the features ``forward`` returns."""
        self.num_features = self.out_channels[-1]
        self.feature_info = FeatureInfo([dict(num_chs=c, reduction=s, module="") for c, s in
                                         zip(self.out_channels, self.strides)], tuple(range(len(self.strides))))
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (timm API; only ``avg`` pooling)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_head(self, features: list[Tensor], pre_logits: bool = False) -> Tensor:
        """Average-pool the deepest feature ``[B, C, h, w]`` -> ``[B, C]``, then ``fc`` ->
        ``[B, num_classes]`` (``[B, C]`` when ``pre_logits`` or ``num_classes == 0``)."""
        pooled = features[-1].mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)
