"""PASCAL VOC average precision, matched exactly as the VOC devkit (``voc_eval``) does.

Per class, detections are sorted by score (descending, ties kept in input order); each is matched
to the ground truth of largest IoU in its image, IoU computed with +1-pixel box sizes
(``w = x2 - x1 + 1``: inclusive integer pixel indices, as VOC XML stores them). If that IoU
exceeds the threshold (``iou_rule=">"``, the devkit's; ``">="``: reaches it, the rule of the
paper's released AP code), a difficult box makes the detection ignored (neither true nor false
positive), an unmatched box makes it a true positive (the box is now matched), an already
matched box a false positive; otherwise it is a false positive. There is no cap per image.

AP from the precision/recall curve: ``use_07_metric=False`` is the all-point interpolated AP of
VOC2010+ (area under the monotone precision envelope) — the metric of the paper's 53.17, with
``iou_rule=">="`` (docs/paper.md); ``True`` is VOC2007's 11-point rule (mean over
``t = 0, 0.1, ..., 1`` of the best precision at recall >= t).

:func:`paper_written` rounds detections as the paper's code writes them to its result files.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

MISSING = -1.0  # AP of a class with no non-difficult ground truth
IoURule = Literal[">", ">="]
IOU_RULES = (">", ">=")


def voc_ap(dets: np.ndarray, gts: np.ndarray, num_classes: int, use_07_metric: bool = False,
           iou_threshold: float = 0.5, iou_rule: IoURule = ">") -> np.ndarray:
    """Per-class AP ``[K]`` (``-1.0`` for a class with no non-difficult ground truth).

    Args:
        dets: ``[D, 7]`` rows ``(image_id, x1, y1, x2, y2, score, label)``.
        gts: ``[G, 7]`` rows ``(image_id, x1, y1, x2, y2, label, difficult)``.
        num_classes: K; labels are ``0..K-1``.
        use_07_metric: VOC2007 11-point AP instead of the all-point AP.
        iou_threshold: a match needs IoU above it (``iou_rule=">"``, the devkit) or at least it
            (``">="``, the paper's code).
    """
    if iou_rule not in IOU_RULES:
        raise ValueError(f"iou_rule must be '>' (the VOC devkit) or '>=' (the paper's code), got {iou_rule!r}")
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 7)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 7)
    out = np.full(num_classes, MISSING)
    for k in range(num_classes):
        class_gts = gts[gts[:, 5] == k]
        positives = int((class_gts[:, 6] == 0).sum())
        if positives == 0:
            continue
        class_dets = dets[dets[:, 6] == k]
        class_dets = class_dets[np.argsort(-class_dets[:, 5], kind="stable")]
        tp, fp = match_class(class_dets[:, :5], class_gts[:, :5], class_gts[:, 6] != 0, iou_threshold,
                             iou_rule)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out[k] = eleven_point_ap(recall, precision) if use_07_metric else all_point_ap(recall, precision)
    return out


def xml_boxes(boxes: np.ndarray) -> np.ndarray:
    """spikeloc's continuous xyxy ``[N, 4]`` (``xmin - 1, ymin - 1, xmax, ymax``) -> the VOC XML's
    inclusive 1-based values ``(xmin, ymin, xmax, ymax)``, the convention of the devkit's input: pass
    ground truth and detections in spikeloc's convention through this (a network trained on XML
    values, as the paper's, predicts these directly)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def match_class(dets: np.ndarray, gts: np.ndarray, difficult: np.ndarray, iou_threshold: float,
                iou_rule: IoURule = ">") -> tuple[np.ndarray, np.ndarray]:
    """True / false positive flags ``[D]`` of score-sorted ``dets`` ``[D, 5]`` (image_id, xyxy)
    against one class's ``gts`` ``[G, 5]`` with ``difficult`` ``[G]`` bool.

    The devkit's sequential loop, vectorised: a detection's best box does not depend on what was
    matched before, so the first detection (in score order) over the threshold on a non-difficult
    box is its true positive and every later one a false positive.
    """
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    images, image_index, counts = np.unique(gts[:, 0], return_inverse=True, return_counts=True)
    order = np.argsort(image_index, kind="stable")
    slot = np.empty(len(gts), dtype=np.int64)  # position of each box within its image
    slot[order] = np.arange(len(gts)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.full((len(images), counts.max(), 4), np.nan)  # [images, M, 4], NaN = no box
    padded[image_index, slot] = gts[:, 1:5]
    padded_difficult = np.zeros(padded.shape[:2], dtype=bool)
    padded_difficult[image_index, slot] = difficult
    where = np.searchsorted(images, dets[:, 0])
    known = (where < len(images)) & (images[np.minimum(where, len(images) - 1)] == dets[:, 0])
    fp[~known] = 1  # no box of this class in the image
    rows = np.flatnonzero(known)
    if len(rows) == 0:
        return tp, fp
    image = where[rows]
    ious = np.nan_to_num(devkit_iou(dets[rows, 1:5], padded[image]), nan=-np.inf)  # [R, M]
    best = ious.argmax(axis=1)
    best_iou = ious[np.arange(len(rows)), best]
    over = best_iou >= iou_threshold if iou_rule == ">=" else best_iou > iou_threshold
    hard = padded_difficult[image, best]
    fp[rows[~over]] = 1
    scoring = rows[over & ~hard]
    key = image[over & ~hard] * padded.shape[1] + best[over & ~hard]
    _, first = np.unique(key, return_index=True)  # rows are in score order: first = earliest
    is_first = np.zeros(len(scoring), dtype=bool)
    is_first[first] = True
    tp[scoring[is_first]] = 1
    fp[scoring[~is_first]] = 1
    return tp, fp


def paper_written(dets: np.ndarray) -> np.ndarray:
    """Detections ``[D, 7]`` (image_id, x1, y1, x2, y2, score, label) as the paper's code writes them:
    each coordinate cut to an integer toward zero (Python's ``int``, boxes not clipped to the image)
    and the float32 score's shortest decimal text cut to 6 characters (``0.86771`` -> ``0.8677``)."""
    out = np.array(dets, dtype=np.float64).reshape(-1, 7)
    out[:, 1:5] = np.trunc(out[:, 1:5])
    out[:, 5] = [float(str(np.float32(score))[:6]) for score in out[:, 5]]
    return out


def devkit_iou(boxes: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """IoU ``[R, M]`` of each box ``[R, 4]`` with its own candidates ``[R, M, 4]`` (+1-pixel sizes)."""
    lo = np.maximum(boxes[:, None, :2], candidates[..., :2])
    hi = np.minimum(boxes[:, None, 2:], candidates[..., 2:])
    inter = np.prod(np.maximum(hi - lo + 1, 0), axis=-1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2] + 1, axis=-1)[:, None]
    area_c = np.prod(candidates[..., 2:] - candidates[..., :2] + 1, axis=-1)
    return inter / (area + area_c - inter)


def all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope ``max_{r' >= r} p(r')`` over the recall steps (VOC2010+)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007: mean over ``t`` in ``0, 0.1, ..., 1`` of the best precision at recall >= t (0 if none)."""
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
    return float(np.mean(points))
