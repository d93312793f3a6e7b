"""Evaluation metrics: detection mAP (a ``torchmetrics.Metric``) and firing / SynOps statistics."""
from .detection_map import DetectionMAP, Gathered
from .firing import FiringStats

__all__ = ["DetectionMAP", "FiringStats", "Gathered"]
