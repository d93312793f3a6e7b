"""YOLO loss: CIoU box loss, BCE objectness with an ignore region, BCE classification.

Every term is a sum over the batch, divided by the batch size (``normalize="batch"``, darknet
style), by the number of positive anchors summed over scales, at least 1 (``"positives"``), or by
the sum over scales of each scale's positives, at least 1 each (``"positives_per_scale"``, the
reference: one more per scale without positives). It is computed densely over all cells with
masks, so it has no host syncs, no per-box Python loops, and is finite (with exactly zero box/class
gradients) when a batch holds no objects. docs/paper.md lists which settings are the paper's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from .anchors import Assign, PaddedTargets, ScaleTargets, build_targets, decode_scale, pad_targets
from .geometry import YOLOGeometry

Normalize = Literal["batch", "positives", "positives_per_scale"]
NORMALIZE = ("batch", "positives", "positives_per_scale")


@dataclass
class PreparedTargets:
    """The part of the loss that depends only on the targets and the output grid (see
    :meth:`YOLOLoss.prepare`): the padded ground truth, the dense targets per scale and the grid
    ``sizes`` ``((H_i, W_i), ...)`` they were built for."""

    gt: PaddedTargets
    scales: list[ScaleTargets]
    sizes: tuple[tuple[int, int], ...]


def max_iou_with_targets(boxes: Tensor, gt: PaddedTargets) -> Tensor:
    """Per prediction, the best IoU with any valid ground truth of its image.

    ``boxes`` ``[B, P, 4]`` -> ``[B, P]`` (zeros when the image has no boxes).
    """
    if gt.boxes.shape[1] == 0:  # a shape, not a value: no sync
        return boxes.new_zeros(boxes.shape[:2])
    ious = torch.vmap(box_iou)(boxes, gt.boxes)  # [B, P, N]
    return ious.masked_fill(~gt.valid[:, None, :], 0.0).amax(dim=-1)


def ciou_loss(pred: Tensor, goal: Tensor, alpha_grad: bool = False, eps: float = 1e-7) -> Tensor:
    """``1 - CIoU`` of xyxy boxes ``[..., 4]`` -> ``[...]``.

    ``CIoU = IoU - d^2 / c^2 - alpha v`` with ``v = 4 / pi^2 (atan(w_g / h_g) - atan(w / h))^2`` and
    ``alpha = v / (1 - IoU + v)``. ``alpha_grad=False`` treats ``alpha`` as a constant (the CIoU
    paper, torchvision's ``complete_box_iou_loss``); ``True`` back-propagates through it (the
    reference code).
    """
    x1, y1, x2, y2 = pred.unbind(-1)
    gx1, gy1, gx2, gy2 = goal.unbind(-1)
    inter_w = (torch.min(x2, gx2) - torch.max(x1, gx1)).clamp(min=0)
    inter = inter_w * (torch.min(y2, gy2) - torch.max(y1, gy1)).clamp(min=0)
    w, h, gw, gh = x2 - x1, y2 - y1, gx2 - gx1, gy2 - gy1
    iou = inter / (w * h + gw * gh - inter + eps)
    diagonal = (torch.max(x2, gx2) - torch.min(x1, gx1)) ** 2 + (torch.max(y2, gy2) - torch.min(y1, gy1)) ** 2 + eps
    centres = ((x1 + x2 - gx1 - gx2) ** 2 + (y1 + y2 - gy1 - gy2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(gw / gh.clamp(min=eps)) - torch.atan(w / h.clamp(min=eps))) ** 2
    alpha = v / (1 - iou + v + eps)
    return 1 - iou + centres / diagonal + (alpha if alpha_grad else alpha.detach()) * v


class YOLOLoss(nn.Module):
    """``(raw_outputs, targets) -> (total, parts)`` for :class:`SpikingYOLO` outputs.

    Args:
        geometry: the model's :class:`YOLOGeometry` (anchors, masks, strides, decoding); default
            SPYv4's at 416x416.
        num_classes: K.
        box_weight, obj_weight, cls_weight: weights of the three terms (reference: 1, 1, 1).
        assign: ``"threshold"`` (best anchor plus every anchor with wh-IoU > ``match_iou``) or
            ``"best"`` (the reference: only the best of all anchors), see :func:`match_anchors`.
        match_iou: the wh-IoU threshold of ``assign="threshold"``.
        ignore_iou: a non-assigned prediction whose decoded box has IoU above this with any
            ground truth of its image is not trained as background (reference 0.5).
        normalize: divide by the batch size (``"batch"``), by the number of positives summed over
            scales, at least 1 (``"positives"``), or by the sum of each scale's positives, at least 1
            each (``"positives_per_scale"``, the reference).
        bce_clamp: ``None``: BCE on the logits (exact for any logit); a number ``eps`` (reference
            1e-7): BCE of the probability clamped to ``[eps, 1 - eps]`` in float32, so a logit beyond
            about +-16 costs at most ``-log(eps)`` and gets no gradient.
        box_area_weight: weight each box term by ``2 - w h / (W H)`` (box over input area; reference).
        ciou_alpha_grad: back-propagate through CIoU's ``alpha`` (reference), see :func:`ciou_loss`.
        scale_balance: optional per-scale weights of the objectness term.
    """

    def __init__(self, geometry: YOLOGeometry | None = None, num_classes: int = 20, box_weight: float = 2.0,
                 obj_weight: float = 1.0, cls_weight: float = 1.0, assign: Assign = "threshold",
                 match_iou: float = 0.213, ignore_iou: float = 0.7, normalize: Normalize = "batch",
                 box_area_weight: bool = False, ciou_alpha_grad: bool = False,
                 scale_balance: Sequence[float] | None = None, bce_clamp: float | None = None) -> None:
        super().__init__()
        self.geometry = geometry if geometry is not None else YOLOGeometry.spyv4()
        self.num_classes = num_classes
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        if assign not in ("threshold", "best") or normalize not in NORMALIZE:
            raise ValueError(f"assign must be 'threshold' or 'best' and normalize one of {NORMALIZE}, "
                             f"got {assign!r}, {normalize!r}")
        if bce_clamp is not None and not 0 < bce_clamp < 0.5:
            raise ValueError(f"bce_clamp must be None or in (0, 0.5), got {bce_clamp!r}")
        self.bce_clamp = bce_clamp
        self.assign, self.match_iou, self.ignore_iou, self.normalize = assign, match_iou, ignore_iou, normalize
        self.box_area_weight, self.ciou_alpha_grad = box_area_weight, ciou_alpha_grad
        scales = len(self.geometry.strides)
        self.scale_balance = list(scale_balance) if scale_balance is not None else [1.0] * scales
        if len(self.scale_balance) != scales:
            raise ValueError("scale_balance needs one weight per scale")

    def bce(self, logits: Tensor, target: Tensor) -> Tensor:
        """Element-wise binary cross-entropy of ``logits`` against ``target`` (same shape), see ``bce_clamp``."""
        if self.bce_clamp is None:
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits).clamp(self.bce_clamp, 1.0 - self.bce_clamp)
        return -(target * torch.log(p) + (1.0 - target) * torch.log(1.0 - p))

    def prepare(self, targets: Sequence[dict], sizes: Sequence[tuple[int, int]], like: Tensor) -> PreparedTargets:
        """Pad ``targets`` and assign them to anchors for outputs of grid ``sizes`` on ``like``'s device:
        what :meth:`forward` reuses when called with the same targets at every time step."""
        like = like.new_empty((), dtype=torch.float32)  # the loss runs in float32 (see forward)
        sizes = tuple((int(h), int(w)) for h, w in sizes)
        gt = pad_targets(targets, like)
        return PreparedTargets(gt, build_targets(gt, self.geometry, sizes, self.num_classes, self.assign,
                                                 self.match_iou), sizes)

    def forward(self, raw_outputs: Sequence[Tensor],
                targets: Sequence[dict] | PreparedTargets) -> tuple[Tensor, dict[str, Tensor]]:
        """Args:
            raw_outputs: per scale ``[B, A_i, H_i, W_i, 5 + K]``.
            targets: B dicts with ``boxes`` ``[N, 4]`` xyxy input pixels and ``labels`` ``[N]``, or
                their :meth:`prepare` for these grid sizes (the same numbers, assigned once).

        Returns:
            ``total`` (scalar) and ``parts`` ``{"box", "obj", "cls"}`` (weighted scalars, still on the
            autograd graph: detach before logging) plus ``"num_pos"`` (positives in the batch).
        """
        geometry = self.geometry
        if len(raw_outputs) != len(geometry.strides):
            raise ValueError(f"expected {len(geometry.strides)} scales, got {len(raw_outputs)}")
        raw_outputs = [r.float() for r in raw_outputs]  # pixel-scale IoU terms overflow in float16
        sizes = tuple(tuple(r.shape[2:4]) for r in raw_outputs)
        if not isinstance(targets, PreparedTargets):
            targets = self.prepare(targets, sizes, raw_outputs[0])
        elif targets.sizes != sizes:
            raise ValueError(f"targets were prepared for grid sizes {targets.sizes}, the outputs have {sizes}")
        gt, scale_targets = targets.gt, targets.scales
        input_area = sizes[0][0] * sizes[0][1] * geometry.strides[0] ** 2
        box = obj = cls = num_pos = per_scale = raw_outputs[0].new_zeros(())
        for index, (raw, target) in enumerate(zip(raw_outputs, scale_targets)):
            pred = decode_scale(raw, geometry, index)  # [B, A, H, W, 4]
            pos = target.positive
            posf = pos.to(raw.dtype)
            # Non-positive cells compare the prediction with itself (zero loss, finite gradient).
            goal = torch.where(pos[..., None], target.boxes, pred.detach())
            box_weight = posf
            if self.box_area_weight:
                area = (target.boxes[..., 2] - target.boxes[..., 0]) * (target.boxes[..., 3] - target.boxes[..., 1])
                box_weight = posf * (2 - area / input_area)
            box = box + (ciou_loss(pred, goal, self.ciou_alpha_grad) * box_weight).sum()
            cls = cls + (self.bce(raw[..., 5:], target.classes).sum(-1) * posf).sum()
            best = max_iou_with_targets(pred.detach().flatten(1, 3), gt).view_as(posf)
            weight = (pos | (best <= self.ignore_iou)).to(raw.dtype)
            obj = obj + self.scale_balance[index] * (
                self.bce(raw[..., 4], posf) * weight).sum()
            num_pos = num_pos + posf.sum()
            per_scale = per_scale + posf.sum().clamp(min=1)
        norm = {"batch": raw_outputs[0].shape[0], "positives": num_pos.clamp(min=1),
                "positives_per_scale": per_scale}[self.normalize]
        parts = {"box": self.box_weight * box / norm, "obj": self.obj_weight * obj / norm,
                 "cls": self.cls_weight * cls / norm}
        total = parts["box"] + parts["obj"] + parts["cls"]
        return total, {**parts, "num_pos": num_pos.detach()}


def distill_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Distillation of raw YOLO outputs ``[B, A, H, W, 5 + K]`` per scale into ``student`` from ``teacher``
    (no gradient to it): at every anchor, BCE to the teacher's objectness probability; where the teacher
    sees an object (weighted by that probability), BCE to its class probabilities and squared error to its
    raw box offsets. Summed, divided by the batch size, like :class:`YOLOLoss` with ``normalize="batch"``."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        s, t = s.float(), t.detach().float()
        p_obj = torch.sigmoid(t[..., 4])
        obj = F.binary_cross_entropy_with_logits(s[..., 4], p_obj, reduction="sum")
        cls = F.binary_cross_entropy_with_logits(s[..., 5:], torch.sigmoid(t[..., 5:]), reduction="none").sum(-1)
        box = (s[..., :4] - t[..., :4]).square().sum(-1)
        total = total + obj + ((cls + box) * p_obj).sum()
    return total / student[0].shape[0]
