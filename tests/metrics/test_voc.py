"""VOC devkit AP (all-point and 11-point) against hand-worked cases and a plain devkit loop."""
from __future__ import annotations

import numpy as np
import pytest

from spikeloc.metrics.voc import voc_ap, xml_boxes


def _gt(image, box, label=0, difficult=0):
    return [image, *box, label, difficult]


def _det(image, box, score, label=0):
    return [image, *box, score, label]


# Image 1: box A and a difficult box B; image 2: box C. Worked by hand in test_hand_worked_case.
GTS = np.array([_gt(1, (0, 0, 9, 9)), _gt(1, (20, 20, 29, 29), difficult=1), _gt(2, (0, 0, 9, 9))])
DETS = np.array([_det(1, (0, 0, 9, 9), 0.9),      # A: true positive
                 _det(1, (0, 0, 9, 9), 0.8),      # A again: false positive
                 _det(1, (20, 20, 29, 29), 0.7),  # difficult B: ignored
                 _det(2, (50, 50, 59, 59), 0.6),  # nothing there: false positive
                 _det(2, (0, 0, 9, 9), 0.5)])     # C: true positive


def test_hand_worked_case():
    # Two positives. Cumulative tp 1,1,1,1,2 and fp 0,1,1,2,2 -> recall .5,.5,.5,.5,1 and
    # precision 1,.5,.5,1/3,.5. All-point: 0.5 * 1 + 0.5 * 0.5 = 0.75.
    # 11-point: t = 0 .. 0.5 (six points) precision 1, t = 0.6 .. 1 (five) 0.5 -> 8.5 / 11.
    shuffled = DETS[[3, 0, 4, 2, 1]]  # the input order does not matter, only the scores
    assert voc_ap(shuffled, GTS, 1) == pytest.approx([0.75])
    assert voc_ap(shuffled, GTS, 1, use_07_metric=True) == pytest.approx([8.5 / 11])


def test_one_pixel_sizes_and_strict_threshold():
    gts = np.array([_gt(1, (1, 1, 3, 3)), _gt(2, (0, 0, 9, 4))])
    # (0,0,3,3) vs (1,1,3,3): 9 / 16 = 0.5625 with +1 sizes (4 / 9 = 0.44 without): a hit.
    hit = voc_ap(np.array([_det(1, (0, 0, 3, 3), 0.9)]), gts[:1], 1)
    # (0,0,9,9) vs (0,0,9,4): IoU exactly 50 / 100 = 0.5 is not above 0.5: a miss.
    miss = voc_ap(np.array([_det(2, (0, 0, 9, 9), 0.9)]), gts[1:], 1)
    assert hit == pytest.approx([1.0]) and miss == pytest.approx([0.0])
    assert voc_ap(np.array([_det(2, (0, 0, 9, 9), 0.9)]), gts[1:], 1, iou_threshold=0.49) == pytest.approx([1.0])


def test_missing_classes_labels_and_images():
    gts = np.array([_gt(1, (0, 0, 9, 9), label=0), _gt(1, (0, 0, 9, 9), label=2, difficult=1)])
    dets = np.array([_det(1, (0, 0, 9, 9), 0.9, label=1),  # right box, wrong class
                     _det(7, (0, 0, 9, 9), 0.8, label=0),  # image without ground truth
                     _det(1, (0, 0, 9, 9), 0.7, label=0)])
    ap = voc_ap(dets, gts, 4)
    # class 0: fp then tp -> recall 0, 1 with precision 0, 0.5 -> AP 0.5; class 1 has no ground truth;
    # class 2 only a difficult box; class 3 nothing.
    assert ap.tolist() == pytest.approx([0.5, -1.0, -1.0, -1.0])
    assert voc_ap(np.zeros((0, 7)), gts, 1).tolist() == [0.0]  # no detections at all


def devkit_loop(dets, gts, num_classes, use_07_metric, threshold=0.5):
    """The VOC devkit's voc_eval, written out plainly (one detection at a time)."""
    out = []
    for k in range(num_classes):
        recs = {}
        for row in gts[gts[:, 5] == k]:
            rec = recs.setdefault(row[0], {"boxes": [], "difficult": [], "det": []})
            rec["boxes"].append(row[1:5])
            rec["difficult"].append(bool(row[6]))
            rec["det"].append(False)
        npos = sum(not d for rec in recs.values() for d in rec["difficult"])
        if npos == 0:
            out.append(-1.0)
            continue
        mine = dets[dets[:, 6] == k]
        mine = mine[np.argsort(-mine[:, 5], kind="stable")]
        tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
        for d, row in enumerate(mine):
            rec, bb, ovmax, jmax = recs.get(row[0]), row[1:5], -np.inf, -1
            if rec is not None:
                for j, g in enumerate(rec["boxes"]):
                    iw = max(min(bb[2], g[2]) - max(bb[0], g[0]) + 1.0, 0.0)
                    ih = max(min(bb[3], g[3]) - max(bb[1], g[1]) + 1.0, 0.0)
                    uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0)
                    overlap = iw * ih / (uni - iw * ih)
                    if overlap > ovmax:
                        ovmax, jmax = overlap, j
            if ovmax > threshold:
                if not rec["difficult"][jmax]:
                    if not rec["det"][jmax]:
                        tp[d], rec["det"][jmax] = 1, True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec_, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07_metric:
            ap = sum((np.max(prec[rec_ >= t]) if np.sum(rec_ >= t) else 0) / 11.0 for t in np.arange(0.0, 1.1, 0.1))
        else:
            mrec, mpre = np.concatenate(([0.0], rec_, [1.0])), np.concatenate(([0.0], prec, [0.0]))
            for i in range(mpre.size - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        out.append(float(ap))
    return np.array(out)


def _random_case(seed: int, images: int = 12, classes: int = 4):
    rng = np.random.default_rng(seed)
    gts = []
    for image in range(1, images + 1):
        for _ in range(rng.integers(0, 6)):
            x, y = rng.integers(0, 80, 2)
            w, h = rng.integers(3, 40, 2)
            gts.append(_gt(image, (x, y, x + w, y + h), rng.integers(classes), int(rng.random() < 0.15)))
    gts = np.array(gts)
    dets = []
    for row in gts:  # jittered copies (some duplicates) and random boxes
        for _ in range(rng.integers(0, 3)):
            box = row[1:5] + rng.normal(0, 3, 4)
            dets.append(_det(row[0], box, rng.random(), row[5] if rng.random() < 0.8 else rng.integers(classes)))
    for _ in range(30):
        x, y = rng.uniform(0, 80, 2)
        dets.append(_det(rng.integers(1, images + 3), (x, y, x + 20, y + 25), rng.random(), rng.integers(classes)))
    dets = np.array(dets)
    dets[rng.random(len(dets)) < 0.2, 5] = 0.5  # score ties
    return dets, gts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [False, True])
def test_equals_plain_devkit_loop(seed, use_07):
    dets, gts = _random_case(seed)
    expected = devkit_loop(dets, gts, 4, use_07)
    np.testing.assert_allclose(voc_ap(dets, gts, 4, use_07_metric=use_07), expected, rtol=0, atol=1e-12)
    assert (expected > 0).sum() >= 2  # the case exercises real matches


def test_xml_boxes_recover_the_annotation_values():
    # VOC XML xmin=1 .. xmax=10 covers pixels 0..9: spikeloc holds (0, ., 10, .), the devkit (1, ., 10, .).
    continuous = np.array([[0.0, 4.0, 10.0, 20.0]])
    assert xml_boxes(continuous).tolist() == [[1.0, 5.0, 10.0, 20.0]]
    gts = np.array([_gt(1, xml_boxes(continuous)[0])])
    assert voc_ap(np.array([_det(1, (1, 5, 10, 20), 0.9)]), gts, 1) == pytest.approx([1.0])
