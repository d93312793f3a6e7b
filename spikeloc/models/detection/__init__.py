"""Spiking YOLO detection: model (neck, head, detector), anchors, loss and post-processing.

Separate objects, wired by the training module::

    model = SpikingYOLO(backbone, num_classes)
    loss = YOLOLoss(model.anchors, model.strides, num_classes)
    post = YOLOPostprocess(anchors=model.anchors, strides=model.strides)
"""
from .anchors import (DEFAULT_SCALE_XY, SPYV4_ANCHORS, SPYV4_STRIDES, PaddedTargets, ScaleTargets, build_targets,
                      decode, decode_boxes, encode_boxes, match_anchors, pad_targets, wh_iou)
from .detector import SpikingYOLO, count_parameters
from .head import YOLOHead
from .loss import YOLOLoss
from .neck import SpikingYOLONeck
from .postprocess import YOLOPostprocess, detections_to_original, to_original_boxes

__all__ = [
    "DEFAULT_SCALE_XY", "PaddedTargets", "SPYV4_ANCHORS", "SPYV4_STRIDES", "ScaleTargets", "SpikingYOLO",
    "SpikingYOLONeck", "YOLOHead", "YOLOLoss", "YOLOPostprocess", "build_targets", "count_parameters", "decode",
    "decode_boxes", "detections_to_original", "encode_boxes", "match_anchors", "pad_targets", "to_original_boxes",
    "wh_iou",
]
