"""Anchors (assignment, encode/decode) and YOLOLoss."""
from __future__ import annotations

import pytest
import torch

from spikeloc.models.detection import (SPYV4_ANCHORS, SPYV4_STRIDES, YOLOGeometry, YOLOLoss, build_targets,
                                       decode_boxes, encode_boxes, pad_targets)
from tests.host_syncs import HostSyncs

K = 4
SIZE = 128
SIZES = [(SIZE // s, SIZE // s) for s in SPYV4_STRIDES]
GEOMETRY = YOLOGeometry.spyv4()



def _target(boxes, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


TARGETS = [_target([[88.5, 46.5, 111.5, 73.5], [20, 30, 101, 112]], [1, 3]),
           _target([], []),
           _target([[5, 60, 60, 120]], [0])]


def _raw(batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, h, w, 5 + K, generator=gen) for h, w in SIZES]


def _ideal(raw: list[torch.Tensor], targets, scale_xy: float = 1.05, match_iou: float = 0.213):
    """Raw outputs that decode to every assigned box, with confident objectness and classes."""
    gt = pad_targets(targets, raw[0])
    scales = build_targets(gt, GEOMETRY, SIZES, K, "threshold", match_iou)
    out = []
    for r, target, anchors, stride in zip(raw, scales, SPYV4_ANCHORS, SPYV4_STRIDES):
        r = r.clone()
        b, a, y, x = target.positive.nonzero(as_tuple=True)
        anchor_wh = torch.tensor(anchors, dtype=r.dtype)[a]
        r[b, a, y, x, :4] = encode_boxes(target.boxes[b, a, y, x], torch.stack((x, y), -1).to(r.dtype), anchor_wh,
                                         stride, scale_xy)
        r[..., 4] = torch.where(target.positive, 8.0, -8.0)
        r[..., 5:] = target.classes * 16 - 8
        out.append(r)
    return out, scales


def test_assignment_best_anchor_and_threshold():
    gt = pad_targets([_target([[88.5, 46.5, 111.5, 73.5]], [1])], torch.zeros(1))  # 23 x 27 at (100, 60)
    only_best = build_targets(gt, GEOMETRY, SIZES, K, iou_threshold=1.0)
    assert only_best[0].positive.nonzero().tolist() == [[0, 0, 3, 6]] and not only_best[1].positive.any()
    # 23x27 vs 37x58 has wh-IoU 621 / 2146 = 0.289 > 0.213: that anchor predicts it too.
    both = build_targets(gt, GEOMETRY, SIZES, K, iou_threshold=0.213)
    assert both[0].positive.nonzero().tolist() == [[0, 0, 3, 6], [0, 1, 3, 6]]
    assert both[0].classes[0, 1, 3, 6].tolist() == [0, 1, 0, 0]
    # An 80x80 box matches the (81, 82) anchor present at both scales.
    gt = pad_targets([_target([[20, 30, 100, 110]], [2])], torch.zeros(1))
    scales = build_targets(gt, GEOMETRY, SIZES, K, iou_threshold=0.9)
    assert scales[0].positive.nonzero().tolist() == [[0, 2, 4, 3]]
    assert scales[1].positive.nonzero().tolist() == [[0, 0, 2, 1]]


@pytest.mark.parametrize("scale_xy", [1.0, 1.05])
def test_encode_decode_round_trip(scale_xy):
    raw = _raw()
    ideal, scales = _ideal(raw, TARGETS, scale_xy)
    count = 0
    for r, target, anchors, stride in zip(ideal, scales, SPYV4_ANCHORS, SPYV4_STRIDES):
        decoded = decode_boxes(r, anchors, stride, scale_xy)
        pos = target.positive
        torch.testing.assert_close(decoded[pos], target.boxes[pos], atol=1e-4, rtol=0)
        count += int(pos.sum())
    assert count >= 3  # every box assigned at least once


def test_zero_objects_finite_and_no_box_class_gradient():
    empty = [_target([], []), _target([], [])]
    raw = [r.requires_grad_() for r in _raw(batch=2)]
    total, parts = YOLOLoss(num_classes=K)(raw, empty)
    assert torch.isfinite(total) and parts["box"] == 0 and parts["cls"] == 0 and parts["num_pos"] == 0
    grads = torch.autograd.grad(parts["box"] + parts["cls"], raw, allow_unused=True, retain_graph=True)
    assert all(g is None or (g == 0).all() for g in grads)
    total.backward()
    assert all(torch.isfinite(r.grad).all() and r.grad[..., 4].abs().sum() > 0 for r in raw)


def test_mixed_batch_finite_gradients():
    raw = [r.requires_grad_() for r in _raw()]
    total, parts = YOLOLoss(num_classes=K)(raw, TARGETS)
    total.backward()
    assert torch.isfinite(total) and parts["box"] > 0 and parts["num_pos"] >= 3
    assert all(torch.isfinite(r.grad).all() for r in raw)
    for r in raw:  # the empty image trains objectness only
        assert (r.grad[1, ..., :4] == 0).all() and (r.grad[1, ..., 5:] == 0).all() and r.grad[1, ..., 4].any()


def test_extreme_outputs_and_degenerate_boxes_stay_finite():
    raw = [(r * 1e4).bfloat16().requires_grad_() for r in _raw()]
    targets = [TARGETS[0], _target([[30, 30, 30, 60], [40, 40, 40, 40]], [1, 2]), TARGETS[2]]  # zero-area
    total, parts = YOLOLoss(num_classes=K)(raw, targets)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(r.grad).all() for r in raw)
    assert parts["num_pos"] == YOLOLoss(num_classes=K)(raw, TARGETS)[1]["num_pos"]


def test_loss_decreases_toward_targets():
    loss = YOLOLoss(num_classes=K)
    raw = _raw()
    ideal, _ = _ideal(raw, TARGETS)
    values = []
    for alpha in (0.0, 0.5, 1.0):
        mixed = [(1 - alpha) * r + alpha * i for r, i in zip(raw, ideal)]
        total, parts = loss(mixed, TARGETS)
        values.append(float(total))
    assert values[0] > values[1] > values[2]
    assert float(parts["box"]) < 1e-3
    params = [r.clone().requires_grad_() for r in raw]
    optimizer = torch.optim.SGD(params, lr=0.05)
    start = float(loss(params, TARGETS)[0].detach())
    for _ in range(5):
        optimizer.zero_grad()
        loss(params, TARGETS)[0].backward()
        optimizer.step()
    assert float(loss(params, TARGETS)[0].detach()) < start


def test_ignore_region_is_not_background():
    target = [_target([[20, 30, 100, 110]], [2])]  # 80x80: matched by (81, 82) only with threshold 0.9
    raw = [torch.zeros(1, 3, h, w, 5 + K) for h, w in SIZES]
    # At stride 16, anchor (37, 58) of the centre cell predicts a box of IoU ~0.9 with the ground truth.
    raw[0][0, 1, 4, 3, 2:4] = torch.log(torch.tensor([80 / 37, 72 / 58]))
    raw[0][0, 1, 4, 3, 4] = 5.0
    grads = {}
    for ignore in (0.7, 1.0):
        r = [t.clone().requires_grad_() for t in raw]
        _, parts = YOLOLoss(num_classes=K, match_iou=0.9, ignore_iou=ignore)(r, target)
        grads[ignore] = torch.autograd.grad(parts["obj"], r[0])[0][0, 1, 4, 3, 4]
    assert grads[0.7] == 0 and grads[1.0] > 0


def test_loss_has_no_host_sync_on_the_cpu():
    raw = [r.requires_grad_() for r in _raw()]
    loss = YOLOLoss(num_classes=K)
    loss(raw, TARGETS)
    with HostSyncs() as found:
        total, _ = loss(raw, TARGETS)
        total.backward()
    assert found == []


@pytest.mark.cuda  # host syncs show only on a device that runs ahead of the host
def test_loss_has_no_host_sync():
    device = torch.device("cuda")
    raw = [r.to(device).requires_grad_() for r in _raw()]
    targets = [{k: v.to(device) for k, v in t.items()} for t in TARGETS]
    loss = YOLOLoss(num_classes=K)
    loss(raw, targets)  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        total, _ = loss(raw, targets)
        total.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- the reference's options -------------------------------------------------------------------
def test_geometry_spyv4_and_from_scales():
    g = YOLOGeometry.spyv4(208)
    assert g.anchors[0] == (5.0, 7.0) and g.masks == ((1, 2, 3), (3, 4, 5)) and g.strides == (16, 32)
    assert g.scale_anchors[1][2] == (172.0, 159.5)
    shared = YOLOGeometry.from_scales(SPYV4_ANCHORS, SPYV4_STRIDES)  # (81, 82) of both scales becomes one
    assert shared.masks == ((0, 1, 2), (2, 3, 4)) and shared.scale_anchors == YOLOGeometry.spyv4().scale_anchors
    for bad in (dict(masks=((0, 9), (1,))), dict(strides=(16,)), dict(log_wh_clamp=(4.0, -8.0))):
        with pytest.raises(ValueError):
            YOLOGeometry(**{**dict(anchors=((1, 2), (3, 4)), masks=((0,), (1,)), strides=(16, 32)), **bad})


def test_decoding_constants_come_from_the_geometry():
    raw = torch.zeros(1, 3, 2, 2, 4)
    raw[0, 0, 1, 0, 2:] = 10.0  # t_w = t_h = 10 at cell (x=0, y=1), anchor (23, 27)
    reference = YOLOGeometry.spyv4(scale_xy=1.0, log_wh_clamp=None)
    box = decode_boxes(raw, reference.scale_anchors[0], 16, reference.scale_xy, reference.log_wh_clamp)[0, 0, 1, 0]
    w, h = 23 * torch.exp(torch.tensor(10.0)), 27 * torch.exp(torch.tensor(10.0))
    torch.testing.assert_close(box, torch.stack([8 - w / 2, 24 - h / 2, 8 + w / 2, 24 + h / 2]))
    clamped = decode_boxes(raw, SPYV4_ANCHORS[0], 16, 1.05)[0, 0, 1, 0]  # spikeloc: t_wh <= 4, scale_xy 1.05
    assert clamped[2] - clamped[0] == pytest.approx(23 * torch.exp(torch.tensor(4.0)).item())
    loss = YOLOLoss(reference, num_classes=K)
    assert loss.geometry is reference


def test_assign_best_of_all_six_anchors():
    ref = YOLOGeometry.spyv4()
    gt = pad_targets([_target([[88.5, 46.5, 111.5, 73.5], [0, 0, 10, 14], [20, 30, 100, 110]], [1, 0, 2])],
                     torch.zeros(1))
    best = build_targets(gt, ref, SIZES, K, assign="best")
    # 23x27 -> anchor (23, 27) only (its 0.289 wh-IoU with (37, 58) no longer counts); 10x14 -> anchor
    # (10, 14), in no mask: dropped; 80x80 -> (81, 82), in both masks: one positive at each scale.
    assert best[0].positive.nonzero().tolist() == [[0, 0, 3, 6], [0, 2, 4, 3]]
    assert best[1].positive.nonzero().tolist() == [[0, 0, 2, 1]]
    threshold = build_targets(gt, ref, SIZES, K, assign="threshold", iou_threshold=0.213)
    # spikeloc: 10x14 goes to its best used anchor (23, 27) (wh-IoU 140 / 621 = 0.225 > 0.213 too).
    assert [0, 0, 0, 0] in threshold[0].positive.nonzero().tolist()
    assert [0, 1, 3, 6] in threshold[0].positive.nonzero().tolist()


def test_normalize_by_positives():
    raw = _raw()
    by_batch = YOLOLoss(num_classes=K)(raw, TARGETS)[1]
    by_pos = YOLOLoss(num_classes=K, normalize="positives")(raw, TARGETS)[1]
    num_pos = float(by_batch["num_pos"])
    assert num_pos >= 3
    for name in ("box", "obj", "cls"):
        assert float(by_pos[name]) == pytest.approx(float(by_batch[name]) * len(TARGETS) / num_pos, rel=1e-5)
    empty = [_target([], [])] * 2  # no positives: divided by 1
    obj_pos = YOLOLoss(num_classes=K, normalize="positives")(_raw(batch=2), empty)[1]["obj"]
    assert float(obj_pos) == pytest.approx(2 * float(YOLOLoss(num_classes=K)(_raw(batch=2), empty)[1]["obj"]))


def test_box_area_weight():
    target = [_target([[88.5, 46.5, 111.5, 73.5]], [1])]  # 23 x 27 in a 128 x 128 input
    raw = _raw(batch=1)
    plain = YOLOLoss(num_classes=K)(raw, target)[1]["box"]
    weighted = YOLOLoss(num_classes=K, box_area_weight=True)(raw, target)[1]["box"]
    assert float(weighted) == pytest.approx(float(plain) * (2 - 23 * 27 / 128**2), rel=1e-6)


def test_ciou_by_hand_and_torchvision():
    from torchvision.ops import complete_box_iou_loss

    from spikeloc.models.detection import ciou_loss
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]], dtype=torch.float64)
    goal = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    # 1: IoU 1/7, centres 2 apart squared over an 18 diagonal squared, same aspect (v = 0).
    # 2: IoU 1/2, centres 0.25 / 8; v = 4/pi^2 (atan 1 - atan 2)^2 = 0.0419568, alpha = v / (0.5 + v).
    v = 4 / torch.pi**2 * (torch.atan(torch.tensor(1.0)) - torch.atan(torch.tensor(2.0))) ** 2
    hand = torch.tensor([1 - 1 / 7 + 2 / 18, 0.5 + 0.25 / 8 + v * v / (0.5 + v)], dtype=torch.float64)
    for alpha_grad in (False, True):
        torch.testing.assert_close(ciou_loss(pred, goal, alpha_grad), hand)
    torch.testing.assert_close(ciou_loss(pred, goal), complete_box_iou_loss(pred, goal))
    p = (pred + 0.1).requires_grad_()
    grad = torch.autograd.grad(ciou_loss(p, goal).sum(), p)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(complete_box_iou_loss(p, goal).sum(), p)[0])
    # Through alpha the gradient is the true derivative of the value; with alpha constant it is not.
    assert torch.autograd.gradcheck(lambda b: ciou_loss(b, goal, True), (p,))
    assert not torch.autograd.gradcheck(lambda b: ciou_loss(b, goal, False), (p,), raise_exception=False)


def test_reference_loss_trains_and_is_finite():
    loss = YOLOLoss(YOLOGeometry.spyv4(scale_xy=1.0, log_wh_clamp=None), num_classes=K, box_weight=1.0,
                    assign="best", ignore_iou=0.5, normalize="positives", box_area_weight=True, ciou_alpha_grad=True)
    params = [r.clone().requires_grad_() for r in _raw()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    values = []
    for _ in range(5):
        optimizer.zero_grad()
        total, parts = loss(params, TARGETS)
        total.backward()
        assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in params)
        optimizer.step()
        values.append(float(total.detach()))
    # one anchor per box; the 81x82 box has anchor (81, 82), in both masks: 1 + 2 + 1 positives
    assert values[-1] < values[0] and parts["num_pos"] == 4


@pytest.mark.parametrize("kwargs", [{}, {"assign": "best", "normalize": "positives", "box_area_weight": True}])
def test_prepared_targets_give_the_same_loss_and_gradients(kwargs):
    loss = YOLOLoss(num_classes=K, **kwargs)
    results = []
    for prepared in (False, True):
        raw = [r.requires_grad_() for r in _raw()]
        targets = loss.prepare(TARGETS, [r.shape[2:4] for r in raw], raw[0]) if prepared else TARGETS
        total, parts = loss(raw, targets)
        total.backward()
        results.append([total, *parts.values(), *(r.grad for r in raw)])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[0][-1].abs().sum() > 0


def test_prepared_targets_must_fit_the_grid():
    loss = YOLOLoss(num_classes=K)
    prepared = loss.prepare(TARGETS, [(h + 1, w) for h, w in SIZES], torch.zeros(1))
    with pytest.raises(ValueError, match="grid sizes"):
        loss(_raw(), prepared)
