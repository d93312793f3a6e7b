"""Pure spiking models: classifiers, backbones (registered in timm) and detectors."""
from .classifier import LTCConvNet, LTCRecurrentNet

__all__ = ["LTCConvNet", "LTCRecurrentNet"]
