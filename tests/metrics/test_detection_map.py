"""DetectionMAP against hand-computed APs and pycocotools called directly."""
from __future__ import annotations

import contextlib
import io
import json
import pickle

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spikeloc.metrics import DetectionMAP

NAMES = ["cat", "dog", "bird"]


def _target(image_id: int, boxes, labels, difficult=None, size=(200, 300)) -> dict:
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    difficult = torch.zeros(len(boxes), dtype=torch.bool) if difficult is None else torch.tensor(difficult)
    return {"image_id": image_id, "orig_size": size, "orig_boxes": boxes, "labels": torch.tensor(labels).long(),
            "difficult": difficult}


def _pred(boxes, scores, labels) -> dict:
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.as_tensor(scores),
            "labels": torch.as_tensor(labels).long()}


def _metric(preds, targets) -> DetectionMAP:
    metric = DetectionMAP(NAMES)
    metric.update(preds, targets)
    return metric


def _coco_stats(metric: DetectionMAP) -> np.ndarray:
    """pycocotools run directly on the metric's own COCO dicts: stats[0..2] = AP, AP50, AP75."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = metric.to_coco_ground_truth()
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(metric.to_coco_results()), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


# Image 1: a cat and a dog; image 2: a cat. Detections: TP(0.9), FP(0.8), TP(0.7) for cats.
TARGETS = [_target(1, [[10, 10, 60, 60], [100, 100, 180, 150]], [0, 1]), _target(2, [[20, 30, 120, 130]], [0])]
PREDS = [_pred([[10, 10, 60, 60], [200, 20, 250, 80], [100, 100, 180, 150]], [0.9, 0.8, 0.95], [0, 0, 1]),
         _pred([[20, 30, 120, 130]], [0.7], [0])]
# cat: recall 1/2 at precision 1, then 1/2 at 1/2, then 1 at 2/3. COCO's 101 recall points:
# r <= 0.5 (51 points) -> 1, r > 0.5 (50 points) -> 2/3. VOC07: 6 points -> 1, 5 points -> 2/3.
CAT_AP = (51 + 50 * 2 / 3) / 101
CAT_VOC07 = (6 + 5 * 2 / 3) / 11
CAT_ALL_POINT = 0.5 * 1 + 0.5 * 2 / 3  # area under the precision envelope


def test_perfect_predictions():
    preds = [_pred(t["orig_boxes"], [0.9] * len(t["labels"]), t["labels"]) for t in TARGETS]
    result = _metric(preds, TARGETS).compute()
    assert [result[k] for k in ("map", "map_50", "map_75", "voc07", "voc_ap")] == pytest.approx([1.0] * 5)
    assert result["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": -1.0})


def test_shifted_box_iou_062():
    # IoU = (100 * 62) / (100 * 100) = 0.62: a hit at IoU thresholds 0.50, 0.55, 0.60 only.
    targets = [_target(1, [[0, 0, 100, 100]], [0])]
    metric = _metric([_pred([[0, 0, 100, 62]], [0.5], [0])], targets)
    precision, iou_thrs, _ = metric.precision()
    per_threshold = precision[:, :, 0].mean(axis=1)
    np.testing.assert_allclose(per_threshold, (iou_thrs <= 0.62).astype(float))
    result = metric.compute()
    assert (result["map_50"], result["map_75"], result["voc07"]) == pytest.approx((1.0, 0.0, 1.0))
    assert result["map"] == pytest.approx(0.3)
    np.testing.assert_allclose(_coco_stats(metric)[:3], [0.3, 1.0, 0.0])


def test_false_positive_ranked_above_true_positive():
    metric = _metric(PREDS, TARGETS)
    result = metric.compute()
    assert result["per_class"]["cat"] == pytest.approx(CAT_AP)
    assert result["per_class_voc07"]["cat"] == pytest.approx(CAT_VOC07)
    assert result["map_50"] == pytest.approx((CAT_AP + 1.0) / 2)
    assert result["voc07"] == pytest.approx((CAT_VOC07 + 1.0) / 2)
    assert result["per_class_voc_ap"]["cat"] == pytest.approx(CAT_ALL_POINT)
    assert result["voc_ap"] == pytest.approx((CAT_ALL_POINT + 1.0) / 2)
    stats = _coco_stats(metric)
    assert (result["map"], result["map_50"], result["map_75"]) == pytest.approx(tuple(stats[:3]))


@pytest.mark.parametrize("detected", [None, 0.99, 0.75, 0.1])
def test_difficult_neither_helps_nor_hurts(detected):
    hard_box = [150, 20, 220, 90]
    targets = [TARGETS[0], _target(2, [[20, 30, 120, 130], hard_box], [0, 0], [False, True])]
    extra = [] if detected is None else [(hard_box, detected)]
    preds = [PREDS[0], _pred([[20, 30, 120, 130]] + [b for b, _ in extra], [0.7] + [s for _, s in extra],
                             [0] * (1 + len(extra)))]
    result = _metric(preds, targets).compute()
    assert result["per_class"]["cat"] == pytest.approx(CAT_AP)
    assert result["per_class_voc07"]["cat"] == pytest.approx(CAT_VOC07)
    # The same box counted as a normal ground truth does change AP.
    targets[1] = _target(2, [[20, 30, 120, 130], hard_box], [0, 0])
    assert _metric(preds, targets).compute()["per_class"]["cat"] != pytest.approx(CAT_AP)


def test_no_detections_is_zero():
    empty = [_pred([], [], []) for _ in TARGETS]
    result = _metric(empty, TARGETS).compute()
    assert result["map"] == result["map_50"] == result["voc07"] == result["voc_ap"] == 0.0
    assert result["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": -1.0}
    assert DetectionMAP(NAMES).compute()["map"] == -1.0  # nothing at all: undefined, no crash


def test_class_without_ground_truth_is_excluded():
    preds = [PREDS[0], _pred([[20, 30, 120, 130], [0, 0, 50, 50]], [0.7, 0.99], [0, 2])]  # a bird FP
    result = _metric(preds, TARGETS).compute()
    assert result["per_class"]["bird"] == -1.0 and result["per_class_voc07"]["bird"] == -1.0
    assert result["map_50"] == pytest.approx((CAT_AP + 1.0) / 2)


def test_a_repeated_image_is_taken_once():
    whole = _metric(PREDS, TARGETS).compute()
    metric = _metric(PREDS, TARGETS)
    # a distributed sampler's padding: image 1 again, with its first copy's ground truth and an extra FP
    extra = _pred([[10, 10, 60, 60], [0, 0, 30, 30]], [0.9, 0.99], [0, 1])
    metric.update([extra], TARGETS[:1])
    assert metric.compute() == whole
    data = metric.gathered()
    assert data.images[:, 0].tolist() == [1, 2] and len(data.gts) == 3 and len(data.dets) == 4
    assert data.gts[:, 0].tolist() == [1, 1, 2] and data.gts[:, 5].tolist() == [0, 1, 0]


def test_state_is_picklable():
    metric = pickle.loads(pickle.dumps(_metric(PREDS, TARGETS)))
    assert metric.compute() == _metric(PREDS, TARGETS).compute()


def test_coco_results_file_and_duplicate_ids(tmp_path):
    metric = _metric(PREDS, TARGETS)
    results = metric.to_coco_results(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == results and len(results) == 4
    assert {r["category_id"] for r in results} == {1, 2}
    assert [a["id"] for a in metric.to_coco_ground_truth()["annotations"]] == [1, 2, 3]
    assert metric.coco_results() == results  # one process: nothing to gather


def test_prints_are_silenced(capsys):
    _metric(PREDS, TARGETS).compute()
    assert capsys.readouterr().out == ""


def test_continuous_detections_are_moved_to_the_xml_convention_like_the_ground_truth():
    # a 2x2-pixel object (XML 1..2): spikeloc holds (0, 0, 2, 2) for it and so does a perfect detection of
    # a network trained on spikeloc's boxes; read as the XML's (1, 1, 2, 2) both match at IoU 1. Taken as
    # XML values (the default, for result files), (0, 0, 2, 2) covers 3x3 pixels: IoU 4 / 9, a miss.
    preds, targets = [_pred([[0, 0, 2, 2]], [0.9], [0])], [_target(1, [[0, 0, 2, 2]], [0])]
    moved = DetectionMAP(NAMES, det_boxes="continuous")
    moved.update(preds, targets)
    assert [moved.compute()[key] for key in ("voc_ap", "voc07", "map_50")] == pytest.approx([1.0, 1.0, 1.0])
    as_given = _metric(preds, targets).compute()
    assert as_given["voc_ap"] == 0.0 and as_given["map_50"] == pytest.approx(1.0)
    # an XML-convention detection (1, 1, 2, 2) matches the same object as given
    assert _metric([_pred([[1, 1, 2, 2]], [0.9], [0])], targets).compute()["voc_ap"] == pytest.approx(1.0)


def test_paper_rule_and_writing_reach_the_voc_aps():
    # ground truth XML (1, 1, 10, 10) -> spikeloc's (0, 0, 10, 10); a detection (0, 0, 5.5, 10) reads
    # (1, 1, 5.5, 10) in the XML's convention: IoU 0.55; the paper's code writes it (1, 1, 5, 10): IoU 0.5
    targets = [_target(1, [[0, 0, 10, 10]], [0])]
    preds = [_pred([[0, 0, 5.5, 10]], [0.86771], [0])]
    results = {}
    for rule, det_format in ((">", "float"), (">", "paper"), (">=", "paper")):
        metric = DetectionMAP(NAMES, iou_rule=rule, det_format=det_format, det_boxes="continuous")
        metric.update(preds, targets)
        results[rule, det_format] = metric.compute()
        if det_format == "paper":
            _, dets = metric.voc_rows(metric.gathered())
            assert dets[:, 1:6].tolist() == [[1.0, 1.0, 5.0, 10.0, 0.8677]]
    assert [results[key]["voc_ap"] for key in results] == [1.0, 0.0, 1.0]
    assert [results[key]["voc07"] for key in results] == [1.0, 0.0, 1.0]
    assert results[">", "paper"]["per_class_voc_ap"]["cat"] == 0.0
    assert len({results[key]["map_50"] for key in results}) == 1  # COCO's metrics read the detections as given


def test_bad_rule_or_format_is_refused():
    with pytest.raises(ValueError, match="iou_rule"):
        DetectionMAP(NAMES, iou_rule="=")
    with pytest.raises(ValueError, match="det_format"):
        DetectionMAP(NAMES, det_format="int")
