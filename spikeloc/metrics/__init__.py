"""Evaluation metrics (plain objects; Lightning glue gathers their state across ranks)."""
from .detection_map import DetectionMAP

__all__ = ["DetectionMAP"]
