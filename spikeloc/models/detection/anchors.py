"""YOLO anchors: decoding, encoding and target assignment over a :class:`YOLOGeometry`.

Raw head outputs per scale are ``[B, A, H, W, 5 + K]`` laid out as
``(t_x, t_y, t_w, t_h, t_obj, t_cls_0 .. t_cls_{K-1})``. Boxes are ``xyxy`` in input pixels.
Decoding (YOLOv4): ``xy = (sigmoid(t_xy) * s - (s - 1) / 2 + grid) * stride`` with
``s = scale_xy`` and ``wh = exp(clamp(t_wh)) * anchor`` (see :mod:`.geometry`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert, box_iou

from .geometry import DEFAULT_SCALE_XY, LOG_WH_RANGE, Anchors, YOLOGeometry

Assign = Literal["threshold", "best"]


def anchor_tensor(anchors: Sequence[Sequence[float]], like: Tensor) -> Tensor:
    """One scale's anchors as ``[A, 2]`` (w, h) on ``like``'s device and dtype."""
    return torch.as_tensor(anchors, dtype=like.dtype, device=like.device).reshape(-1, 2)


def make_grid(height: int, width: int, like: Tensor) -> Tensor:
    """Cell offsets ``[H, W, 2]`` holding (x, y) = (column, row)."""
    ys = torch.arange(height, dtype=like.dtype, device=like.device)
    xs = torch.arange(width, dtype=like.dtype, device=like.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def decode_boxes(raw: Tensor, anchors: Sequence[Sequence[float]], stride: int,
                 scale_xy: float = DEFAULT_SCALE_XY,
                 log_wh_clamp: tuple[float, float] | None = LOG_WH_RANGE) -> Tensor:
    """Boxes ``[B, A, H, W, 4]`` xyxy in input pixels from raw outputs ``[B, A, H, W, >=4]``."""
    height, width = raw.shape[2:4]
    grid = make_grid(height, width, raw)  # [H, W, 2]
    xy = (torch.sigmoid(raw[..., 0:2]) * scale_xy - (scale_xy - 1) / 2 + grid) * stride
    t_wh = raw[..., 2:4] if log_wh_clamp is None else raw[..., 2:4].clamp(*log_wh_clamp)
    wh = torch.exp(t_wh) * anchor_tensor(anchors, raw).view(1, -1, 1, 1, 2)
    return torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)


def decode_scale(raw: Tensor, geometry: YOLOGeometry, scale: int) -> Tensor:
    """:func:`decode_boxes` of scale ``scale`` with ``geometry``'s anchors, stride and constants."""
    return decode_boxes(raw, geometry.scale_anchors[scale], geometry.strides[scale], geometry.scale_xy,
                        geometry.log_wh_clamp)


def decode(raw: Tensor, geometry: YOLOGeometry, scale: int) -> tuple[Tensor, Tensor, Tensor]:
    """Raw ``[B, A, H, W, 5 + K]`` of scale ``scale`` -> boxes ``[B, A, H, W, 4]``, objectness
    ``[B, A, H, W]``, class probabilities ``[B, A, H, W, K]`` (independent sigmoids, YOLOv3+)."""
    return decode_scale(raw, geometry, scale), torch.sigmoid(raw[..., 4]), torch.sigmoid(raw[..., 5:])


def encode_boxes(boxes: Tensor, cells: Tensor, anchors: Tensor, stride: int,
                 scale_xy: float = DEFAULT_SCALE_XY, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`decode_boxes`: the ideal ``(t_x, t_y, t_w, t_h)`` ``[N, 4]``.

    Args:
        boxes: ``[N, 4]`` xyxy input pixels.
        cells: ``[N, 2]`` (x, y) cell indices the boxes are predicted from.
        anchors: ``[N, 2]`` (w, h) of the predicting anchors.
    """
    cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    frac = (cxcywh[:, :2] / stride - cells + (scale_xy - 1) / 2) / scale_xy
    t_xy = torch.logit(frac.clamp(eps, 1 - eps))
    t_wh = torch.log(cxcywh[:, 2:] / anchors)
    return torch.cat((t_xy, t_wh), dim=-1)


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU ``[N, M]`` of shapes ``[N, 2]`` and ``[M, 2]`` placed at a common corner."""
    zeros1, zeros2 = torch.zeros_like(wh1), torch.zeros_like(wh2)
    return box_iou(torch.cat((zeros1, wh1), dim=-1), torch.cat((zeros2, wh2), dim=-1))


def fit_anchors(wh: Tensor, count: int, iterations: int = 50) -> Tensor:
    """``count`` anchor sizes ``[count, 2]`` (sorted by area) for boxes of sizes ``wh`` ``[N, 2]``: k-means
    under the distance ``1 - wh-IoU`` (YOLOv2's dimension clusters) with medians as centres, started
    from evenly spaced size quantiles, so the same boxes always give the same anchors."""
    if len(wh) < count:
        raise ValueError(f"fit_anchors: {len(wh)} boxes for {count} anchors")
    wh = wh.float()
    by_area = wh[(wh[:, 0] * wh[:, 1]).argsort()]
    centres = by_area[((torch.arange(count) + 0.5) * len(wh) / count).long()].clone()
    for _ in range(iterations):
        nearest = wh_iou(wh, centres).argmax(1)
        moved = torch.stack([wh[nearest == k].median(0).values if (nearest == k).any() else centres[k]
                             for k in range(count)])
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres[(centres[:, 0] * centres[:, 1]).argsort()]


def best_anchor_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """``[N]``: each box's wh-IoU with its best-fitting anchor."""
    return wh_iou(wh.float(), anchors.float()).max(1).values


@dataclass
class PaddedTargets:
    """Ground truth of a batch padded to ``N = max boxes per image``.

    ``boxes`` ``[B, N, 4]`` xyxy input pixels, ``labels`` ``[B, N]`` long, ``valid`` ``[B, N]`` bool.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def pad_targets(targets: Sequence[dict], like: Tensor) -> PaddedTargets:
    """Stack the per-image ``boxes``/``labels`` of a detection batch (N may be 0 anywhere);
    zero-area boxes are marked invalid."""
    boxes = [t["boxes"].to(device=like.device, dtype=like.dtype).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device=like.device, dtype=torch.long).reshape(-1) for t in targets]
    valid = [(b[:, 2:] > b[:, :2]).all(-1) for b in boxes]  # degenerate boxes are not trained on
    return PaddedTargets(pad_sequence(boxes, batch_first=True), pad_sequence(labels, batch_first=True),
                         pad_sequence(valid, batch_first=True))


@dataclass
class ScaleTargets:
    """Dense targets of one scale, all ``[B, A, H, W, ...]``.

    ``positive`` bool ``[B, A, H, W]``; ``boxes`` ``[B, A, H, W, 4]`` xyxy input pixels (zeros where
    not positive); ``classes`` ``[B, A, H, W, K]`` multi-hot.
    """

    positive: Tensor
    boxes: Tensor
    classes: Tensor


def _argmax_mask(x: Tensor) -> Tensor:
    """Bool, shaped like ``x``: True at the argmax of the last dim (``one_hot`` without its range check,
    which reads the indices back to the host on a CPU)."""
    return torch.arange(x.shape[-1], device=x.device) == x.argmax(-1, keepdim=True)


def match_anchors(gt: PaddedTargets, geometry: YOLOGeometry, assign: Assign = "threshold",
                  iou_threshold: float = 0.213) -> Tensor:
    """Bool ``[B, N, len(geometry.anchors)]``: which anchors predict each valid box (by wh-IoU).

    ``assign="best"`` (the reference): only the box's best anchor over ALL anchors, so a box whose
    best anchor is in no scale's mask is not trained on. ``"threshold"``: the best anchor among
    those some scale uses, plus every anchor whose wh-IoU exceeds ``iou_threshold``.
    """
    if assign not in ("threshold", "best"):
        raise ValueError(f"assign must be 'threshold' or 'best', got {assign!r}")
    all_anchors = anchor_tensor(geometry.anchors, gt.boxes)  # [A_all, 2]
    batch, count = gt.valid.shape
    wh = (gt.boxes[..., 2:] - gt.boxes[..., :2]).reshape(-1, 2)
    ious = wh_iou(wh, all_anchors).view(batch, count, len(all_anchors))
    if assign == "best":
        return gt.valid[..., None] & _argmax_mask(ious)
    used = torch.zeros(len(all_anchors), dtype=torch.bool, device=ious.device)
    used[[i for mask in geometry.masks for i in mask]] = True
    best = _argmax_mask(ious.masked_fill(~used, -1.0))
    return gt.valid[..., None] & (best | (ious > iou_threshold))


def build_targets(gt: PaddedTargets, geometry: YOLOGeometry, sizes: Sequence[tuple[int, int]], num_classes: int,
                  assign: Assign = "threshold", iou_threshold: float = 0.213) -> list[ScaleTargets]:
    """Dense per-scale targets: each matched (box, anchor) pair marks the cell holding the box centre
    at every scale whose mask holds that anchor (:func:`match_anchors`).

    Sync-free: unmatched pairs are scattered into a spare "trash" slot that is dropped afterwards.
    When two boxes claim the same (anchor, cell), one box target wins (unspecified which) and the
    class target keeps both labels.
    """
    match = match_anchors(gt, geometry, assign, iou_threshold)  # [B, N, A_all]
    batch, count = gt.valid.shape
    centres = (gt.boxes[..., :2] + gt.boxes[..., 2:]) / 2  # [B, N, 2]
    b_idx = torch.arange(batch, device=gt.boxes.device).view(-1, 1, 1)
    out = []
    for mask, stride, (height, width) in zip(geometry.masks, geometry.strides, sizes):
        num_a = len(mask)
        a_idx = torch.arange(num_a, device=gt.boxes.device).view(1, 1, -1)
        cx = (centres[..., 0] / stride).floor().long().clamp(0, width - 1)[..., None]  # [B, N, 1]
        cy = (centres[..., 1] / stride).floor().long().clamp(0, height - 1)[..., None]
        cells = batch * num_a * height * width
        flat = ((b_idx * num_a + a_idx) * height + cy) * width + cx  # [B, N, A]
        flat = torch.where(match[..., list(mask)], flat, torch.full_like(flat, cells)).reshape(-1)
        positive = gt.boxes.new_zeros(cells + 1, dtype=torch.bool).index_put_((flat,), torch.ones_like(flat).bool())
        boxes = gt.boxes.new_zeros(cells + 1, 4).index_put_(
            (flat,), gt.boxes[:, :, None].expand(batch, count, num_a, 4).reshape(-1, 4))
        labels = gt.labels[..., None].expand(batch, count, num_a).reshape(-1)
        classes = gt.boxes.new_zeros((cells + 1) * num_classes).index_put_(
            (flat * num_classes + labels,), gt.boxes.new_ones(()).expand(flat.shape))
        shape = (batch, num_a, height, width)
        out.append(ScaleTargets(positive[:-1].view(shape), boxes[:-1].view(*shape, 4),
                                classes[:-num_classes].view(*shape, num_classes)))
    return out
