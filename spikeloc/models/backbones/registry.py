"""Registers every spiking backbone with timm (``timm.list_models("ltc_*")``, ``"spyv4*"``).

Build by name, optionally with local weights (nothing is ever downloaded: the default
pretrained configs carry no url or hub id)::

    timm.create_model("ltc_resnet18", num_classes=10, width=0.5,
                      pretrained=True, pretrained_cfg_overlay=dict(file="weights.ckpt"))

Weights go through ``build_model_with_cfg``: timm reads the file (``weights_only=True``; a
Lightning ``state_dict`` entry is taken), then :func:`~.pretrained.timm_filter_fn` strips the module
prefix, maps ANN names onto cells, checks shapes and logs the report.
"""
from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, register_model

from .base import SpikingBackbone
from .pretrained import timm_filter_fn
from .resnet import RESNET_ARCHS, LTCResNet
from .spyv4 import SPYv4Tiny


def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), **kwargs: Any) -> dict[str, Any]:
    # classifier/first_conv stay None: our filter handles head and stem adaptation itself
    return dict(url="", num_classes=1000, input_size=input_size, pool_size=None, crop_pct=1.0,
                interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                license="apache-2.0", **kwargs)


default_cfgs: dict[str, dict[str, Any]] = {
    "ltc_resnet18": _cfg(description="spiking ResNet-18 of LTC-SN cells"),
    "ltc_resnet34": _cfg(description="spiking ResNet-34 of LTC-SN cells"),
    "ltc_resnet50": _cfg(description="spiking ResNet-50 (bottleneck) of LTC-SN cells"),
    "spyv4_tiny": _cfg(input_size=(3, 416, 416), description="SPYv4 spiking CSPDarknet-tiny backbone"),
}


def _build(model_cls: Any, variant: str, pretrained: bool, **kwargs: Any) -> SpikingBackbone:
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=timm_filter_fn,
                                pretrained_strict=False, **kwargs)


def _resnet(variant: str, pretrained: bool, **kwargs: Any) -> LTCResNet:
    block, layers = RESNET_ARCHS[variant]
    return _build(LTCResNet, variant, pretrained, block=block, layers=layers, **kwargs)


@register_model
def ltc_resnet18(pretrained: bool = False, **kwargs: Any) -> LTCResNet:
    """Spiking ResNet-18: basic blocks 2-2-2-2, features at strides 8/16/32 (128/256/512 ch)."""
    return _resnet("ltc_resnet18", pretrained, **kwargs)


@register_model
def ltc_resnet34(pretrained: bool = False, **kwargs: Any) -> LTCResNet:
    """Spiking ResNet-34: basic blocks 3-4-6-3, features at strides 8/16/32 (128/256/512 ch)."""
    return _resnet("ltc_resnet34", pretrained, **kwargs)


@register_model
def ltc_resnet50(pretrained: bool = False, **kwargs: Any) -> LTCResNet:
    """Spiking ResNet-50: bottlenecks 3-4-6-3, features at strides 8/16/32 (512/1024/2048 ch)."""
    return _resnet("ltc_resnet50", pretrained, **kwargs)


@register_model
def spyv4_tiny(pretrained: bool = False, **kwargs: Any) -> SPYv4Tiny:
    """SPYv4 spiking CSPDarknet-tiny: features at strides 16/32 by default (8 on request)."""
    return _build(SPYv4Tiny, "spyv4_tiny", pretrained, **kwargs)
