"""Detection mAP as a ``torchmetrics.Metric``: COCO mAP@[.5:.95], AP@.5, AP@.75 on pycocotools, and
the VOC devkit's 11-point and all-point AP@.5 (:mod:`spikeloc.metrics.voc`).

Detections and ground truth are list states (``dist_reduce_fx="cat"``): under DDP torchmetrics
gathers every rank's rows before ``compute()``, so the mAP is computed once on the union of
all images (averaging per-rank mAPs is wrong). A distributed sampler repeats images to even
out ranks; a repeated ``image_id`` is taken once (its first copy in rank order).
Conventions:

* category id = label + 1, annotation ids start at 1 (pycocotools reads id 0 as "unmatched");
* difficult boxes are ``iscrowd=1``: COCOeval ignores them (pycocotools overwrites an ``ignore`` field
  with ``iscrowd``), so a detection on one is neither a hit nor a false positive and missing it costs
  nothing. Crowd matching uses intersection over the detection's area;
* a class with no (non-difficult) ground truth has AP -1 and is left out of every mean;
* no detections at all gives AP 0 (``COCO.loadRes([])`` would raise, so it is never called then);
* the VOC APs see boxes in the VOC XML's convention, inclusive 1-based pixel indices, as the devkit
  expects: ground truth (spikeloc's continuous ``(xmin - 1, ymin - 1, xmax, ymax)``) is moved there by
  :func:`~spikeloc.metrics.voc.xml_boxes`; detections are taken as given (``det_boxes="xml"``: result
  files, detectors trained on the XML values) or moved the same way (``"continuous"``: a network trained
  on spikeloc's boxes, as :class:`~spikeloc.training.SpikingDetector` evaluates its own);
* ``iou_rule`` and ``det_format="paper"`` select the paper's AP code (docs/paper.md): a VOC match at
  IoU >= 0.5, and detections cut as its result files hold them (integer boxes, 4-decimal scores).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .voc import IOU_RULES, IoURule, paper_written, voc_ap, xml_boxes

MISSING = -1.0  # AP of a class without ground truth (pycocotools' convention)


class Gathered(NamedTuple):
    """A metric's state as plain arrays, every image once.

    ``images`` ``[I, 3]`` (image_id, height, width); ``gts`` ``[G, 7]`` (image_id, x1, y1, x2, y2,
    label, difficult); ``dets`` ``[D, 7]`` (image_id, x1, y1, x2, y2, score, label). Boxes in
    original image pixels, labels 0-based.
    """

    images: np.ndarray
    gts: np.ndarray
    dets: np.ndarray


def _rows(state: Tensor | list[Tensor], width: int) -> np.ndarray:
    if isinstance(state, list) and not state:
        return np.zeros((0, width))
    return dim_zero_cat(state).reshape(-1, width).double().cpu().numpy()


class DetectionMAP(Metric):
    """Args:
        class_names: K names; label k is ``class_names[k]``.
        max_detections: detections per image and class that COCOeval considers.
        verbose: let pycocotools print (and print its summary).
        iou_rule: the VOC APs' match rule: ``">"`` (the devkit's, default) or ``">="`` (the paper's code).
        det_format: the VOC APs' detections: ``"float"`` (as given) or ``"paper"`` (as the paper's code
            writes them, :func:`~spikeloc.metrics.voc.paper_written`).
        det_boxes: the convention of the detections' boxes for the VOC APs: ``"xml"`` (the VOC XML's
            values, as given) or ``"continuous"`` (spikeloc's, moved like the ground truth).
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``process_group`` ...).

    ``compute()`` returns COCO's ``map`` (AP@[.5:.95]), ``map_50`` (101-point AP@.5), ``map_75``, the
    VOC devkit's ``voc07`` (11-point AP@.5) and ``voc_ap`` (all-point AP@.5, the paper's metric), and
    per class ``per_class`` (COCO AP@.5), ``per_class_voc07``, ``per_class_voc_ap``; -1 where undefined.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, class_names: Sequence[str], max_detections: int = 100, verbose: bool = False,
                 iou_rule: IoURule = ">", det_format: Literal["float", "paper"] = "float",
                 det_boxes: Literal["xml", "continuous"] = "xml", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if iou_rule not in IOU_RULES or det_format not in ("float", "paper") or det_boxes not in ("xml", "continuous"):
            raise ValueError(f"iou_rule must be one of {IOU_RULES}, det_format 'float' or 'paper' and det_boxes "
                             f"'xml' or 'continuous'; got {iou_rule!r}, {det_format!r}, {det_boxes!r}")
        self.class_names = list(class_names)
        self.max_detections, self.verbose = max_detections, verbose
        self.iou_rule, self.det_format, self.det_boxes = iou_rule, det_format, det_boxes
        # one row per image: image_id, height, width, number of ground-truth boxes, number of detections
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self.add_state("gts", default=[], dist_reduce_fx="cat")  # [N, 6]: x1, y1, x2, y2, label, difficult
        self.add_state("dets", default=[], dist_reduce_fx="cat")  # [M, 6]: x1, y1, x2, y2, score, label

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        """Add a batch (device tensors stay on the device: no host sync).

        Args:
            predictions: per image ``boxes`` ``[M, 4]`` xyxy ORIGINAL pixels, ``scores`` ``[M]``, ``labels`` ``[M]``.
            targets: per image ``image_id``, ``orig_size`` (h, w), ``orig_boxes`` ``[N, 4]`` xyxy,
                ``labels`` ``[N]`` and optionally ``difficult`` ``[N]``.
        """
        def column(value: Any, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(value, device=self.device).to(dtype).reshape(-1, 1)

        for pred, target in zip(predictions, targets, strict=True):
            boxes = column(target["orig_boxes"]).reshape(-1, 4)
            labels = column(target["labels"])
            difficult = column(target["difficult"]) if "difficult" in target else torch.zeros_like(labels)
            found = column(pred["boxes"]).reshape(-1, 4)
            self.gts.append(torch.cat([boxes, labels, difficult], dim=1))
            self.dets.append(torch.cat([found, column(pred["scores"]), column(pred["labels"])], dim=1))
            self.images.append(torch.cat([column(target["image_id"], torch.int64).reshape(1),
                                          column(target["orig_size"], torch.int64).reshape(2),
                                          torch.tensor([len(boxes), len(found)], device=self.device)]))

    def gathered(self) -> Gathered:
        """The current state (all ranks' inside ``compute()``) as arrays, every image once.

        Rows are concatenated in the same (rank, update) order in every state, so the per-image
        counts say which rows belong to which image copy; only the first copy of an id is kept.
        """
        images = _rows(self.images, 5).astype(np.int64)
        gts, dets = _rows(self.gts, 6), _rows(self.dets, 6)
        _, first = np.unique(images[:, 0], return_index=True)
        keep = np.zeros(len(images), dtype=bool)
        keep[first] = True

        def owned(rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
            owner = np.repeat(np.arange(len(images)), counts)
            return np.column_stack([images[owner, 0], rows])[keep[owner]]

        return Gathered(images[np.sort(first), :3], owned(gts, images[:, 3]), owned(dets, images[:, 4]))

    def to_coco_ground_truth(self, data: Gathered | None = None) -> dict:
        """The ground truth as a COCO dataset dict (of ``data``, default this rank's state)."""
        data = data if data is not None else self.gathered()
        images = [{"id": int(i), "height": int(h), "width": int(w)} for i, h, w in data.images]
        annotations = [{"id": n + 1, "image_id": int(g[0]), "bbox": _xywh(g[1:5]), "area": float(g[3] - g[1]) *
                        float(g[4] - g[2]), "category_id": int(g[5]) + 1, "iscrowd": int(g[6])}
                       for n, g in enumerate(data.gts)]
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def to_coco_results(self, path: str | Path | None = None, data: Gathered | None = None) -> list[dict]:
        """The detections in the COCO results format (of ``data``, default this rank's state); also
        written as JSON to ``path`` if given. Use :meth:`coco_results` for all ranks' detections."""
        data = data if data is not None else self.gathered()
        results = [{"image_id": int(d[0]), "category_id": int(d[6]) + 1, "bbox": _xywh(d[1:5]), "score": float(d[5])}
                   for d in data.dets]
        if path is not None:
            Path(path).write_text(json.dumps(results))
        return results

    def coco_results(self) -> list[dict]:
        """Every rank's detections (gathered, de-duplicated) in the COCO results format.
        Under DDP every rank must call it (it gathers)."""
        with self.sync_context(should_sync=not self._is_synced, should_unsync=True):
            return self.to_coco_results()

    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def precision(self, data: Gathered | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COCOeval's interpolated precision ``[T, R, K]`` (area "all", the largest max-dets), with
        its IoU thresholds ``[T]`` and recall thresholds ``[R]``; -1 for classes without ground truth."""
        data = data if data is not None else self.gathered()
        params = COCOeval(iouType="bbox").params
        iou_thrs, rec_thrs = params.iouThrs, params.recThrs
        num_classes = len(self.class_names)
        if not len(data.dets):  # loadRes([]) raises; every class with ground truth has precision 0
            counted = {int(g[5]) for g in data.gts if not g[6]}
            has_gt = np.array([k in counted for k in range(num_classes)])
            shape = (len(iou_thrs), len(rec_thrs), num_classes)
            return np.where(has_gt, np.zeros(shape), np.full(shape, MISSING)), iou_thrs, rec_thrs
        with self._quiet():
            gt = COCO()
            gt.dataset = self.to_coco_ground_truth(data)
            gt.createIndex()
            dt = gt.loadRes(self.to_coco_results(data=data))
            evaluator = COCOeval(gt, dt, iouType="bbox")
            evaluator.params.catIds = list(range(1, num_classes + 1))
            evaluator.params.maxDets = [1, 10, self.max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
            if self.verbose:
                evaluator.summarize()
        area_all = list(evaluator.params.areaRngLbl).index("all")
        return evaluator.eval["precision"][:, :, :, area_all, -1], iou_thrs, rec_thrs

    def voc_rows(self, data: Gathered) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth ``[G, 7]`` and detections ``[D, 7]`` as the VOC APs read them: boxes in the VOC
        XML's inclusive pixel values (see ``det_boxes``), detections then cut as ``det_format`` says."""
        gts, dets = data.gts.copy(), data.dets.copy()
        gts[:, 1:5] = xml_boxes(gts[:, 1:5])
        if self.det_boxes == "continuous":
            dets[:, 1:5] = xml_boxes(dets[:, 1:5])
        return gts, paper_written(dets) if self.det_format == "paper" else dets

    def compute(self) -> dict[str, Any]:
        """The metrics as Python floats (see the class docstring), on all ranks' images."""
        data = self.gathered()
        precision, iou_thrs, rec_thrs = self.precision(data)  # [T, R, K]
        valid = precision[0, 0] > MISSING  # [K] classes with ground truth
        ap = precision.mean(axis=1)  # [T, K]
        t50, t75 = int(np.argmin(abs(iou_thrs - 0.5))), int(np.argmin(abs(iou_thrs - 0.75)))
        # The VOC devkit's own matching and AP rules (docs/paper.md), on its inclusive pixel values
        voc_gts, voc_dets = self.voc_rows(data)
        voc07 = voc_ap(voc_dets, voc_gts, len(self.class_names), use_07_metric=True, iou_rule=self.iou_rule)  # [K]
        all_point = voc_ap(voc_dets, voc_gts, len(self.class_names), iou_rule=self.iou_rule)  # [K]

        def mean(values: np.ndarray) -> float:
            return float(values[valid].mean()) if valid.any() else MISSING

        def per_class(values: np.ndarray) -> dict[str, float]:
            return {name: float(v) if ok else MISSING for name, v, ok in zip(self.class_names, values, valid)}

        return {"map": mean(ap.mean(axis=0)), "map_50": mean(ap[t50]), "map_75": mean(ap[t75]),
                "voc07": mean(voc07), "voc_ap": mean(all_point), "per_class": per_class(ap[t50]),
                "per_class_voc07": per_class(voc07), "per_class_voc_ap": per_class(all_point)}


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]
