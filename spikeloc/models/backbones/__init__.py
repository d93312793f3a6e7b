"""Spiking backbones (one contract: ``forward(x_t, state) -> (features, state)``), registered with timm.

Importing this package registers ``ltc_resnet18``, ``ltc_resnet34``, ``ltc_resnet50``, ``spyv4_tiny``,
``ltc_convnet`` and ``srnn_ltc`` with ``timm.create_model`` / ``timm.list_models``.
"""
from . import registry  # noqa: F401  (registers the models with timm)
from .base import SpikingBackbone, scale_channels
from .pretrained import LoadReport, ann_to_cell_key, load_pretrained, match_state_dict, read_state_dict
from .resnet import BasicBlock, Bottleneck, LTCResNet
from .small import LTCConvNet, LTCRecurrentNet
from .spyv4 import CSPBlock, SPYv4Tiny
from .yolov4_tiny import from_yolov4_tiny, is_yolov4_tiny, yolov4_tiny_name

BACKBONES = ("ltc_resnet18", "ltc_resnet34", "ltc_resnet50", "spyv4_tiny")

__all__ = [
    "BACKBONES", "BasicBlock", "Bottleneck", "CSPBlock", "LTCConvNet", "LTCRecurrentNet", "LTCResNet", "LoadReport",
    "SPYv4Tiny", "SpikingBackbone", "ann_to_cell_key", "from_yolov4_tiny", "is_yolov4_tiny", "load_pretrained",
    "match_state_dict", "read_state_dict", "scale_channels", "yolov4_tiny_name",
]
