"""Pure spiking models: classifiers, backbones (registered in timm) and detectors."""
from . import backbones  # noqa: F401  (registers the backbones with timm)
from .classifier import LTCConvNet, LTCRecurrentNet

__all__ = ["LTCConvNet", "LTCRecurrentNet", "backbones"]
