"""spikeloc: deep convolutional spiking networks (LTC-SN) trained online with FPTT, for detection.

Importing the package registers its spiking models with timm (``timm.list_models("ltc_*")``).
"""
from . import models  # noqa: F401  (registers the spiking models with timm)
