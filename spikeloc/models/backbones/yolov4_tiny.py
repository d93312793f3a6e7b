"""Non-spiking YOLOv4-tiny checkpoints in the common PyTorch layout, renamed onto SPYv4.

The layout is that of the widely used PyTorch YOLOv4-tiny (``YoloBody``), the network the paper's
released code copies its initial weights from: a ``BasicConv`` (``conv`` without bias, ``bn``,
leaky ReLU) for every layer, the 1x1 output convs with a bias. Its tensors and SPYv4's:

=====================================  =====================================
YOLOv4-tiny                            :class:`~spikeloc.models.detection.SpikingYOLO`
=====================================  =====================================
``backbone.conv1/conv2/conv3``         ``backbone.conv1/conv2/conv3``
``backbone.resblock_body{i}.conv{j}``  ``backbone.csp{i}.conv{j}`` (i = 1..3, j = 1..4)
``conv_for_P5`` (1x1, 512 -> 256)      ``neck.lateral``
``yolo_headP5.0`` (3x3, 256 -> 512)    ``neck.top``
``yolo_headP5.1`` (1x1, stride 32)     ``head.convs.1``
``upsample.upsample.0`` (1x1, -> 128)  ``neck.reduce.0``
``yolo_headP4.0`` (3x3, 384 -> 256)    ``neck.fuse.0``
``yolo_headP4.1`` (1x1, stride 16)     ``head.convs.0``
=====================================  =====================================

``conv.weight`` and ``bn.{weight, bias, running_mean, running_var}`` keep their names inside each
cell (``SpikingConv2d`` has ``conv`` and ``bn`` too): 19 cells x 5 + 2 heads x 2 = 99 tensors.
The backbone's own file (``CSPDarkNet``, the same names without ``backbone.``) maps the same way.
BatchNorm step counters (``num_batches_tracked``) are left out, as the paper's loader leaves them.
timm and torchvision hold no CSPDarknet-tiny (timm's ``cspdarknet53`` and ``cs3darknet_*`` are other
networks), so this is the one ANN layout of SPYv4's architecture.
"""
from __future__ import annotations

import re

from torch import Tensor

COUNTER = "num_batches_tracked"
_CSP = re.compile(r"(^|\.)resblock_body(\d)\.")
_RENAMES = (  # (layout prefix, SpikingYOLO prefix), applied to the start of a key
    ("conv_for_P5.", "neck.lateral."),
    ("yolo_headP5.0.", "neck.top."),
    ("yolo_headP5.1.", "head.convs.1."),
    ("upsample.upsample.0.", "neck.reduce.0."),
    ("yolo_headP4.0.", "neck.fuse.0."),
    ("yolo_headP4.1.", "head.convs.0."),
)
_MARKERS = ("resblock_body", "conv_for_P5", "yolo_headP")


def is_yolov4_tiny(keys: list[str]) -> bool:
    """Whether checkpoint ``keys`` are in the YOLOv4-tiny layout (whole detector or backbone)."""
    return any(marker in key for key in keys for marker in _MARKERS)


def yolov4_tiny_name(key: str) -> str:
    """A YOLOv4-tiny layout key -> the :class:`SpikingYOLO` (or, without ``backbone.``, SPYv4 backbone)
    key: ``backbone.resblock_body2.conv3.bn.bias`` -> ``backbone.csp2.conv3.bn.bias``,
    ``yolo_headP4.1.weight`` -> ``head.convs.0.weight``; other keys are returned unchanged."""
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return _CSP.sub(r"\1csp\2.", key)


def from_yolov4_tiny(state_dict: dict[str, Tensor], root: str = "") -> tuple[dict[str, Tensor], int]:
    """Rename a YOLOv4-tiny layout ``state_dict`` to spikeloc names under ``root`` (e.g. ``"model."``,
    to read like a Lightning checkpoint of a detector); returns the renamed tensors and the number of
    BatchNorm step counters left out."""
    renamed = {root + yolov4_tiny_name(key): value for key, value in state_dict.items() if not key.endswith(COUNTER)}
    return renamed, len(state_dict) - len(renamed)
