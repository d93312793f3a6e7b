"""VOC devkit AP (all-point and 11-point) against hand-worked cases and a plain devkit loop."""
from __future__ import annotations

import numpy as np
import pytest

from spikeloc.metrics.voc import paper_written, voc_ap, xml_boxes


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


# ---- the paper's AP code: IoU >= 0.5, and its result files' rounding ------------------------------

def paper_loop(dets, gts, num_classes, threshold=0.5):
    """All-point AP as the paper's released AP code computes it, written out from its rules: per
    detection (score order), the best IoU (+1-pixel sizes) over the boxes it overlaps (-1 if none);
    a match when that IoU reaches the threshold; recall and precision over max(count, 1)."""
    out = []
    for k in range(num_classes):
        boxes = [dict(image=r[0], box=r[1:5], difficult=bool(r[6]), used=False) for r in gts if r[5] == k]
        npos = sum(not b["difficult"] for b in boxes)
        if npos == 0:
            out.append(-1.0)
            continue
        order = sorted(range(len(dets)), key=lambda i: -dets[i][5])  # Python's sort is stable
        tp, fp = [], []
        for d in (dets[i] for i in order if dets[i][6] == k):
            ovmax, match = -1.0, None
            for g in (b for b in boxes if b["image"] == d[0]):
                iw = min(d[3], g["box"][2]) - max(d[1], g["box"][0]) + 1
                ih = min(d[4], g["box"][3]) - max(d[2], g["box"][1]) + 1
                if iw > 0 and ih > 0:
                    ua = (d[3] - d[1] + 1) * (d[4] - d[2] + 1) + (g["box"][2] - g["box"][0] + 1) * (
                        g["box"][3] - g["box"][1] + 1) - iw * ih
                    if iw * ih / ua > ovmax:
                        ovmax, match = iw * ih / ua, g
            reached = ovmax >= threshold
            ignored = reached and match["difficult"]
            hit = reached and not match["difficult"] and not match["used"]
            if hit:
                match["used"] = True
            tp.append(int(hit))
            fp.append(int(not hit and not ignored))
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = list(tp / max(npos, 1))
        precision = list(tp / np.maximum(tp + fp, 1))
        mrec, mpre = [0.0] + recall + [1.0], [0.0] + precision + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        out.append(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]))
    return np.array(out)


def test_iou_exactly_at_the_threshold_matches_only_with_the_papers_rule():
    gts = np.array([_gt(1, (0, 0, 9, 4))])
    dets = np.array([_det(1, (0, 0, 9, 9), 0.9)])  # +1-pixel sizes: 50 / 100 = 0.5 exactly
    assert voc_ap(dets, gts, 1).tolist() == [0.0]  # the devkit: IoU must exceed 0.5
    assert voc_ap(dets, gts, 1, iou_rule=">=").tolist() == [1.0]  # the paper's code: reaching it is enough
    assert voc_ap(dets, gts, 1, use_07_metric=True, iou_rule=">=").tolist() == [1.0]
    with pytest.raises(ValueError, match="iou_rule"):
        voc_ap(dets, gts, 1, iou_rule="=>")


def _integer_case(seed: int, images: int = 10, classes: int = 3):
    """Integer boxes with many detections at IoU exactly 0.5 (half the height of a box)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image in range(1, images + 1):
        for _ in range(rng.integers(1, 5)):
            x, y = rng.integers(0, 60, 2)
            w, h = rng.integers(2, 20), 2 * rng.integers(2, 12)
            label = rng.integers(classes)
            gts.append(_gt(image, (x, y, x + w - 1, y + h - 1), label, int(rng.random() < 0.15)))
            for _ in range(rng.integers(0, 3)):
                if rng.random() < 0.5:
                    dets.append(_det(image, (x, y, x + w - 1, y + h // 2 - 1), rng.random(), label))  # IoU 0.5
                else:
                    dets.append(_det(image, (x, y, x + w - 1, y + h - 1) + rng.integers(-2, 3, 4), rng.random(), label))
    return np.array(dets), np.array(gts)


@pytest.mark.parametrize("seed", range(4))
def test_papers_rule_equals_a_plain_loop_of_the_papers_code(seed):
    dets, gts = _integer_case(seed)
    expected = paper_loop(dets.tolist(), gts.tolist(), 3)
    np.testing.assert_allclose(voc_ap(dets, gts, 3, iou_rule=">="), expected, rtol=0, atol=1e-12)
    assert not np.allclose(voc_ap(dets, gts, 3), expected)  # the devkit's rule gives other numbers here
    assert (expected > 0).sum() >= 2


def test_paper_written_cuts_as_the_papers_result_files():
    dets = np.array([_det(1, (10.9, -0.7, 99.99, 5.0), 0.86771), _det(2, (0.2, 3.5, 7.5, 8.999), 0.0012399)])
    # the paper's writing, from its facts: "%s %s %s %s %s %s" % (name, str(score)[:6], int(left), ...)
    lines = ["c %s %s %s %s %s" % (str(np.float32(d[5]))[:6], *(int(v) for v in d[1:5])) for d in dets]
    parsed = [[float(v) for v in line.split()[1:]] for line in lines]
    written = paper_written(dets)
    assert written[:, [5, 1, 2, 3, 4]].tolist() == parsed
    assert written[:, 5].tolist() == [0.8677, 0.0012] and written[:, 1:5].tolist()[0] == [10, 0, 99, 5]


def test_paper_writing_changes_matches_and_ties():
    gts = np.array([_gt(1, (1, 1, 10, 10)), _gt(3, (1, 1, 10, 10))])
    # (1, 1, 5.5, 10): IoU 0.55 as a float; cut to (1, 1, 5, 10): 0.5, a hit only with ">="
    cut = np.array([_det(1, (1, 1, 5.5, 10), 0.9)])
    assert voc_ap(cut, gts[:1], 1).tolist() == [1.0]
    assert voc_ap(paper_written(cut), gts[:1], 1).tolist() == [0.0]
    assert voc_ap(paper_written(cut), gts[:1], 1, iou_rule=">=").tolist() == [1.0]
    # scores 0.12341 (a hit) and 0.12349 (a miss, ranked first): cut to 4 decimals they tie and keep
    # the input order, the hit first
    tie = np.array([_det(1, (1, 1, 10, 10), 0.12341), _det(2, (1, 1, 10, 10), 0.12349),
                    _det(3, (1, 1, 10, 10), 0.1)])
    # float: miss, hit, hit -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP 2/3; cut: hit, miss, hit ->
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP 1/2 + 1/3
    assert voc_ap(tie, gts, 1).tolist() == pytest.approx([2 / 3])
    assert voc_ap(paper_written(tie), gts, 1).tolist() == pytest.approx([0.5 + 1 / 3])
