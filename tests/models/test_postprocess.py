"""YOLOPostprocess: thresholds, class-wise NMS, caps, decoding and mapping to original pixels."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import nms

from spikeloc.models.detection import (SPYV4_ANCHORS, SPYV4_STRIDES, YOLOGeometry, YOLOPostprocess, build_targets,
                                       detections_to_original, encode_boxes, pad_targets, to_original_boxes)

BOXES = torch.tensor([[10, 10, 50, 50], [12, 12, 52, 52], [11, 9, 49, 51], [60, 60, 90, 90],
                      [62, 61, 91, 92], [0, 0, 20, 20], [100, 100, 140, 150]], dtype=torch.float32)
SCORES = torch.tensor([[0.90, 0.10, 0.00], [0.80, 0.70, 0.00], [0.30, 0.75, 0.02], [0.60, 0.00, 0.50],
                       [0.65, 0.00, 0.55], [0.004, 0.00, 0.20], [0.00, 0.40, 0.45]])


def _by_hand(boxes, scores, conf, iou, max_det):
    """torchvision.ops.nms run per class, merged by decreasing score."""
    rows = []
    for k in range(scores.shape[1]):
        keep = scores[:, k] >= conf
        kept = nms(boxes[keep], scores[keep, k], iou)
        rows += [(float(scores[keep, k][i]), k, boxes[keep][i].tolist()) for i in kept]
    return sorted(rows, key=lambda r: -r[0])[:max_det]


def _rows(det):
    return [(float(s), int(k), b.tolist()) for s, k, b in zip(det["scores"], det["labels"], det["boxes"])]


@pytest.mark.parametrize("conf,iou,max_det", [(0.005, 0.45, 100), (0.25, 0.5, 100), (0.005, 0.3, 4)])
def test_select_equals_per_class_nms(conf, iou, max_det):
    post = YOLOPostprocess(conf, iou, max_det)
    boxes = torch.stack((BOXES, BOXES.flip(0)))  # two images: no suppression across images
    scores = torch.stack((SCORES, SCORES.flip(0)))
    dets = post.select(boxes, scores)
    assert len(dets) == 2
    for i in range(2):
        assert _rows(dets[i]) == _by_hand(boxes[i], scores[i], conf, iou, max_det)
    assert len(dets[0]["boxes"]) == min(max_det, len(_by_hand(BOXES, SCORES, conf, iou, 1000)))


def test_single_label_and_pre_nms_cap():
    best = YOLOPostprocess(0.005, 0.45, multi_label=False).select(BOXES[None], SCORES[None])[0]
    assert _rows(best) == _by_hand(BOXES, SCORES * (SCORES == SCORES.amax(1, keepdim=True)), 0.005, 0.45, 100)
    capped = YOLOPostprocess(0.005, 0.45, pre_nms_top_k=2).select(BOXES[None], SCORES[None])[0]
    # Only the 2 best pairs (0.9 and 0.8, both class 0) enter NMS, where 0.8 overlaps 0.9.
    assert capped["scores"].tolist() == pytest.approx([0.9])


def test_no_candidates_gives_empty_detections():
    dets = YOLOPostprocess(0.99, 0.45).select(BOXES[None], SCORES[None])[0]
    assert dets["boxes"].shape == (0, 4) and dets["scores"].shape == (0,) and dets["labels"].shape == (0,)


def test_decodes_assigned_boxes_end_to_end():
    num_classes, size = 3, 128
    gt = torch.tensor([[88.5, 46.5, 111.5, 73.5], [20.0, 30.0, 100.0, 110.0]])
    sizes = [(size // s, size // s) for s in SPYV4_STRIDES]
    scales = build_targets(pad_targets([{"boxes": gt, "labels": torch.tensor([1, 2])}], gt),
                           YOLOGeometry.spyv4(), sizes, num_classes, iou_threshold=1.0)
    raw = []
    for target, anchors, stride in zip(scales, SPYV4_ANCHORS, SPYV4_STRIDES):
        r = torch.full((1, 3, *target.positive.shape[2:], 5 + num_classes), -10.0)
        b, a, y, x = target.positive.nonzero(as_tuple=True)
        r[b, a, y, x, :4] = encode_boxes(target.boxes[b, a, y, x], torch.stack((x, y), -1).float(),
                                         torch.tensor(anchors)[a], stride)
        r[..., 4] = torch.where(target.positive, 10.0, -10.0)
        r[..., 5:] = target.classes * 20 - 10
        raw.append(r)
    det = YOLOPostprocess(0.5, 0.45)(raw)[0]
    assert det["labels"].tolist() == [1, 2] or det["labels"].tolist() == [2, 1]
    order = det["labels"].argsort()
    torch.testing.assert_close(det["boxes"][order], gt, atol=1e-3, rtol=0)
    assert (det["scores"] > 0.99).all()


def test_to_original_inverts_letterbox_and_clips():
    orig = torch.tensor([[10.0, 20.0, 110.0, 70.0], [300.0, 5.0, 330.0, 40.0]])
    scale, pad, size = 0.5, (3.0, 40.0), (100, 320)  # orig (h, w) = (100, 320)
    inputs = orig * scale + torch.tensor([*pad, *pad])
    back = to_original_boxes(inputs, scale, torch.tensor(pad), torch.tensor(size))
    torch.testing.assert_close(back, torch.tensor([[10.0, 20.0, 110.0, 70.0], [300.0, 5.0, 320.0, 40.0]]))
    dets = [{"boxes": inputs, "scores": torch.ones(2), "labels": torch.zeros(2, dtype=torch.long)}]
    mapped = detections_to_original(dets, [{"scale": scale, "pad": pad, "orig_size": size}])
    torch.testing.assert_close(mapped[0]["boxes"], back)
    assert mapped[0]["scores"] is dets[0]["scores"]
    # clip=False (the paper's code): the box past the right edge keeps its 330
    unclipped = detections_to_original(dets, [{"scale": scale, "pad": pad, "orig_size": size}], clip=False)
    torch.testing.assert_close(unclipped[0]["boxes"], orig)


def test_reference_protocol_threshold_inclusive_one_label_no_cap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 40, 10, 50]])
    scores = torch.tensor([[0.001, 0.0], [0.0009, 0.0], [0.3, 0.2], [0.5, 0.6]])
    reference = YOLOPostprocess(0.001, 0.5, None, pre_nms_top_k=None, multi_label=False)
    rows = _rows(reference.select(boxes[None], scores[None])[0])
    # score >= 0.001 is kept (0.0009 is not); one label per box: box 2 is class 0 only, box 3 class 1 only.
    assert [(round(s, 4), k) for s, k, _ in rows] == [(0.6, 1), (0.3, 0), (0.001, 0)]
    many = torch.rand(1, 300, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.01
    spread = torch.arange(300.0)[:, None] * 20  # 300 disjoint boxes: NMS keeps every one
    grid = torch.cat((spread, spread, spread + 10, spread + 10), dim=1)[None]
    assert len(reference.select(grid, many)[0]["scores"]) == 300
    assert len(YOLOPostprocess(0.001, 0.5).select(grid, many)[0]["scores"]) == 100  # spikeloc's cap
