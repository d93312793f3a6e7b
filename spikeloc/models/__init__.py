"""Pure spiking models: backbones and small classifiers (registered in timm) and detectors."""
from . import backbones  # noqa: F401  (registers the models with timm)
from .backbones import LTCConvNet, LTCRecurrentNet

__all__ = ["LTCConvNet", "LTCRecurrentNet", "backbones"]
