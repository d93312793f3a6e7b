"""Detection mAP on pycocotools (COCO mAP@[.5:.95], AP@.5, AP@.75, VOC07 11-point AP@.5).

Predictions and ground truth are kept as plain Python lists per image, so the state of every DDP
rank can be gathered (``state()``), merged (``merge``) and evaluated ONCE on the union: averaging
per-rank mAPs is wrong. Conventions:

* category id = label + 1, annotation ids start at 1 (pycocotools reads id 0 as "unmatched");
* difficult boxes are ``iscrowd=1``: COCOeval ignores them (pycocotools overwrites an ``ignore`` field
  with ``iscrowd``), so a detection on one is neither a hit nor a false positive and missing it costs
  nothing. Crowd matching uses intersection over the detection's area;
* a class with no (non-difficult) ground truth has AP -1 and is left out of every mean;
* no detections at all gives AP 0 (``COCO.loadRes([])`` would raise, so it is never called then).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

MISSING = -1.0  # AP of a class without ground truth (pycocotools' convention)


def _list(value: Any) -> list:
    return value.detach().cpu().tolist() if isinstance(value, Tensor) else list(value)


def _xywh(boxes: Any) -> list[list[float]]:
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in _list(boxes)]


class DetectionMAP:
    """Args:
        class_names: K names; label k is ``class_names[k]``.
        max_detections: detections per image and class that COCOeval considers.
        verbose: let pycocotools print (and print its summary).

    ``compute()`` returns ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``voc07`` (11-point AP@.5),
    ``per_class`` {name: AP@.5} and ``per_class_voc07`` {name: 11-point AP@.5}; -1 where undefined.
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100, verbose: bool = False) -> None:
        self.class_names = list(class_names)
        self.max_detections, self.verbose = max_detections, verbose
        self.reset()

    def reset(self) -> None:
        self._images: dict[int, tuple[int, int]] = {}
        self._gts: list[list] = []  # [image_id, x, y, w, h, category_id, difficult]
        self._dets: list[list] = []  # [image_id, x, y, w, h, score, category_id]

    def __len__(self) -> int:
        return len(self._images)

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        """Add a batch.

        Args:
            predictions: per image ``boxes`` ``[M, 4]`` xyxy ORIGINAL pixels, ``scores`` ``[M]``, ``labels`` ``[M]``.
            targets: per image ``image_id``, ``orig_size`` (h, w), ``orig_boxes`` ``[N, 4]`` xyxy,
                ``labels`` ``[N]`` and optionally ``difficult`` ``[N]``.
        """
        for pred, target in zip(predictions, targets, strict=True):
            image_id = int(target["image_id"])
            if image_id in self._images:
                raise ValueError(f"image_id {image_id} was already added")
            height, width = (int(v) for v in _list(target["orig_size"]))
            self._images[image_id] = (height, width)
            labels = _list(target["labels"])
            difficult = _list(target["difficult"]) if "difficult" in target else [False] * len(labels)
            for box, label, hard in zip(_xywh(target["orig_boxes"]), labels, difficult, strict=True):
                self._gts.append([image_id, *box, int(label) + 1, int(bool(hard))])
            for box, score, label in zip(_xywh(pred["boxes"]), _list(pred["scores"]), _list(pred["labels"]),
                                         strict=True):
                self._dets.append([image_id, *box, float(score), int(label) + 1])

    def state(self) -> dict[str, list]:
        """Picklable state (lists of ints and floats) for gathering across ranks."""
        images = [[i, h, w] for i, (h, w) in self._images.items()]
        return {"images": images, "gts": [list(g) for g in self._gts], "dets": [list(d) for d in self._dets]}

    def merge(self, states: Sequence[dict[str, list]]) -> "DetectionMAP":
        """Add the images of ``states`` not already held (DDP samplers repeat images to even out
        ranks: a repeated image id is taken once). Merging one's own state is a no-op."""
        for state in states:
            new = {int(i) for i, _, _ in state["images"]} - set(self._images)
            self._images.update({int(i): (int(h), int(w)) for i, h, w in state["images"] if int(i) in new})
            self._gts.extend(list(g) for g in state["gts"] if int(g[0]) in new)
            self._dets.extend(list(d) for d in state["dets"] if int(d[0]) in new)
        return self

    def to_coco_ground_truth(self) -> dict:
        """The ground truth as a COCO dataset dict."""
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in self._images.items()]
        annotations = [{"id": n + 1, "image_id": g[0], "bbox": g[1:5], "area": g[3] * g[4], "category_id": g[5],
                        "iscrowd": g[6]} for n, g in enumerate(self._gts)]
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def to_coco_results(self, path: str | Path | None = None) -> list[dict]:
        """The detections in the COCO results format; also written as JSON to ``path`` if given."""
        results = [{"image_id": d[0], "category_id": d[6], "bbox": d[1:5], "score": d[5]} for d in self._dets]
        if path is not None:
            Path(path).write_text(json.dumps(results))
        return results

    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def precision(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COCOeval's interpolated precision ``[T, R, K]`` (area "all", the largest max-dets), with
        its IoU thresholds ``[T]`` and recall thresholds ``[R]``; -1 for classes without ground truth."""
        params = COCOeval(iouType="bbox").params
        iou_thrs, rec_thrs = params.iouThrs, params.recThrs
        num_classes = len(self.class_names)
        if not self._dets:  # loadRes([]) raises; every class with ground truth has precision 0
            counted = {g[5] for g in self._gts if not g[6]}
            has_gt = np.array([k + 1 in counted for k in range(num_classes)])
            shape = (len(iou_thrs), len(rec_thrs), num_classes)
            return np.where(has_gt, np.zeros(shape), np.full(shape, MISSING)), iou_thrs, rec_thrs
        with self._quiet():
            gt = COCO()
            gt.dataset = self.to_coco_ground_truth()
            gt.createIndex()
            dt = gt.loadRes(self.to_coco_results())
            evaluator = COCOeval(gt, dt, iouType="bbox")
            evaluator.params.catIds = list(range(1, num_classes + 1))
            evaluator.params.maxDets = [1, 10, self.max_detections]
            evaluator.evaluate()
            evaluator.accumulate()
            if self.verbose:
                evaluator.summarize()
        area_all = list(evaluator.params.areaRngLbl).index("all")
        return evaluator.eval["precision"][:, :, :, area_all, -1], iou_thrs, rec_thrs

    def compute(self) -> dict[str, Any]:
        """The metrics as Python floats (see the class docstring)."""
        precision, iou_thrs, rec_thrs = self.precision()  # [T, R, K]
        valid = precision[0, 0] > MISSING  # [K] classes with ground truth
        ap = precision.mean(axis=1)  # [T, K]
        t50, t75 = int(np.argmin(abs(iou_thrs - 0.5))), int(np.argmin(abs(iou_thrs - 0.75)))
        # VOC07 11-point AP: mean over r in {0, 0.1, ..., 1} of p_interp(r) = max precision at any recall
        # >= r (0 if r is never reached). COCOeval's precision at a recall threshold r is exactly that:
        # accumulate() replaces each precision by the max over all later (higher-recall) detections, then
        # reads it at the first detection whose recall is >= r, and leaves 0 where r is not reached.
        # So the 11 COCO values at r = 0, 0.1, ..., 1 are VOC07's p_interp. What differs is matching:
        # COCO counts IoU >= t (VOC > 0.5, +1-pixel areas), lets a detection take the next-best free ground
        # truth (VOC: a duplicate of its best one is a false positive), and ignores detections on difficult
        # boxes by intersection over detection area; COCOeval also keeps max_detections per image and class.
        eleven = [int(np.argmin(abs(rec_thrs - r))) for r in np.linspace(0.0, 1.0, 11)]
        voc07 = precision[t50, eleven].mean(axis=0)  # [K]

        def mean(values: np.ndarray) -> float:
            return float(values[valid].mean()) if valid.any() else MISSING

        def per_class(values: np.ndarray) -> dict[str, float]:
            return {name: float(v) if ok else MISSING for name, v, ok in zip(self.class_names, values, valid)}

        return {"map": mean(ap.mean(axis=0)), "map_50": mean(ap[t50]), "map_75": mean(ap[t75]),
                "voc07": mean(voc07), "per_class": per_class(ap[t50]), "per_class_voc07": per_class(voc07)}
