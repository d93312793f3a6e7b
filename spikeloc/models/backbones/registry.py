"""Registers every spiking backbone with timm (``timm.list_models("ltc_*")``, ``"spyv4*"``, ``"srnn_*"``).

Build by name, optionally with local weights (nothing is ever downloaded: the default
pretrained configs carry no url or hub id)::

    timm.create_model("ltc_resnet18", num_classes=10, width=0.5,
                      pretrained=True, pretrained_cfg_overlay=dict(file="weights.ckpt"))

Weights go through ``build_model_with_cfg``: timm reads the file (``weights_only=True``; a
Lightning ``state_dict`` entry is taken), then :func:`~.pretrained.timm_filter_fn` strips the module
prefix, maps ANN names onto cells, checks shapes and logs the report; timm itself adapts the stem
to other input channels and drops a classifier of another size (``first_conv``, ``classifier``).

A spiking backbone already is a features model (``forward(x_t, state) -> (features, state)``), so
``features_only=True`` builds it without classifier; ``out_indices`` pick among the feature strides
the architecture offers, and ``feature_info`` describes the outputs as timm's other models do::

    net = timm.create_model("spyv4_tiny", features_only=True, out_indices=(0, 1, 2))
    net.feature_info.channels(), net.feature_info.reduction()   # [128, 256, 512], [8, 16, 32]
"""
from __future__ import annotations

from typing import Any, Sequence

from timm.models import build_model_with_cfg, register_model

from .base import SpikingBackbone
from .pretrained import timm_filter_fn
from .resnet import RESNET_ARCHS, STAGE_STRIDES, LTCResNet
from .small import LTCConvNet, LTCRecurrentNet
from .spyv4 import FEATURE_STRIDES, SPYv4Tiny


def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), **kwargs: Any) -> dict[str, Any]:
    # first_conv / classifier: timm adapts the stem to other input channels and resets a head of
    # another size with its own rules (``adapt_input_conv``, classifier dropped)
    return {**dict(url="", num_classes=1000, input_size=input_size, pool_size=None, crop_pct=1.0,
                   interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   first_conv="conv1.conv", classifier="fc", license="apache-2.0"), **kwargs}


default_cfgs: dict[str, dict[str, Any]] = {
    "ltc_resnet18": _cfg(description="spiking ResNet-18 of LTC-SN cells"),
    "ltc_resnet34": _cfg(description="spiking ResNet-34 of LTC-SN cells"),
    "ltc_resnet50": _cfg(description="spiking ResNet-50 (bottleneck) of LTC-SN cells"),
    "spyv4_tiny": _cfg(input_size=(3, 416, 416), description="SPYv4 spiking CSPDarknet-tiny backbone"),
    "ltc_convnet": _cfg(input_size=(1, 32, 32), num_classes=10, first_conv="cells.0.conv",
                        description="small LTC-SN conv net"),
    "srnn_ltc": _cfg(input_size=(1, 1, 1), num_classes=10, first_conv=None,
                     description="recurrent dense LTC-SN net (adaptive thresholds)"),
}


def _build(model_cls: Any, variant: str, pretrained: bool, feature_strides: Sequence[int] = (),
           features_only: bool = False, out_indices: Sequence[int] | None = None, **kwargs: Any) -> SpikingBackbone:
    """``build_model_with_cfg``; ``features_only``: no classifier, ``out_indices`` into ``feature_strides``."""
    if features_only:
        kwargs["num_classes"] = 0
    if out_indices is not None:
        if not features_only or not feature_strides:
            raise ValueError(f"{variant}: out_indices needs features_only=True and a model with out_strides")
        kwargs["out_strides"] = [feature_strides[i] for i in out_indices]
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=timm_filter_fn,
                                pretrained_strict=False, **kwargs)


def _resnet(variant: str, pretrained: bool, **kwargs: Any) -> LTCResNet:
    block, layers = RESNET_ARCHS[variant]
    return _build(LTCResNet, variant, pretrained, STAGE_STRIDES, block=block, layers=layers, **kwargs)


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
    return _build(SPYv4Tiny, "spyv4_tiny", pretrained, FEATURE_STRIDES, **kwargs)


@register_model
def ltc_convnet(pretrained: bool = False, **kwargs: Any) -> LTCConvNet:
    """Small LTC-SN conv net (3 stride-2 cells) for quick image / event-frame classification."""
    return _build(LTCConvNet, "ltc_convnet", pretrained, **kwargs)


@register_model
def srnn_ltc(pretrained: bool = False, **kwargs: Any) -> LTCRecurrentNet:
    """Recurrent dense LTC-SN net with adaptive thresholds for vector sequences (S-MNIST)."""
    return _build(LTCRecurrentNet, "srnn_ltc", pretrained, **kwargs)
