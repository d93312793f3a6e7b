"""Spiking YOLO detection: model (neck, head, detector), geometry, anchors, loss and post-processing.

Separate objects that share the model's :class:`YOLOGeometry`, wired by the training module::

    model = SpikingYOLO(backbone, num_classes)
    loss = YOLOLoss(model.geometry, num_classes)
    post = YOLOPostprocess(geometry=model.geometry)
"""
from .anchors import (PaddedTargets, ScaleTargets, best_anchor_iou, build_targets, decode, decode_boxes, decode_scale,
                      encode_boxes, fit_anchors, match_anchors, pad_targets, wh_iou)
from .detector import SpikingYOLO, count_parameters, make_geometry, seeded_rng, xavier_init
from .geometry import (DEFAULT_SCALE_XY, LOG_WH_RANGE, SPYV4_ALL_ANCHORS, SPYV4_ANCHORS, SPYV4_MASKS, SPYV4_STRIDES,
                       YOLOGeometry, scaled_anchors)
from .head import YOLOHead
from .loss import YOLOLoss, ciou_loss, distill_loss
from .neck import SpikingYOLONeck
from .postprocess import YOLOPostprocess, detections_to_original, to_original_boxes

__all__ = [
    "DEFAULT_SCALE_XY", "LOG_WH_RANGE", "PaddedTargets", "SPYV4_ALL_ANCHORS", "SPYV4_ANCHORS", "SPYV4_MASKS",
    "SPYV4_STRIDES", "ScaleTargets", "SpikingYOLO", "SpikingYOLONeck", "YOLOGeometry", "YOLOHead", "YOLOLoss",
    "YOLOPostprocess", "best_anchor_iou", "build_targets", "ciou_loss", "count_parameters", "decode",
    "decode_boxes", "decode_scale", "detections_to_original", "distill_loss", "encode_boxes", "fit_anchors", "make_geometry",
    "match_anchors", "pad_targets", "scaled_anchors", "seeded_rng", "to_original_boxes", "wh_iou", "xavier_init",
]
