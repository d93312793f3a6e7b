"""YOLO loss: CIoU box loss, BCE objectness with an ignore region, BCE classification.

Every term is a sum over the batch divided by the batch size (darknet style), computed densely
over all cells with masks, so it has no host syncs, no per-box Python loops, and is finite
(with exactly zero box/class gradients) when a batch holds no objects.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, complete_box_iou_loss

from .anchors import (DEFAULT_SCALE_XY, SPYV4_ANCHORS, SPYV4_STRIDES, Anchors, PaddedTargets, build_targets,
                      check_anchors, decode_boxes, pad_targets)


def max_iou_with_targets(boxes: Tensor, gt: PaddedTargets) -> Tensor:
    """Per prediction, the best IoU with any valid ground truth of its image.

    ``boxes`` ``[B, P, 4]`` -> ``[B, P]`` (zeros when the image has no boxes).
    """
    if gt.boxes.shape[1] == 0:  # a shape, not a value: no sync
        return boxes.new_zeros(boxes.shape[:2])
    ious = torch.vmap(box_iou)(boxes, gt.boxes)  # [B, P, N]
    return ious.masked_fill(~gt.valid[:, None, :], 0.0).amax(dim=-1)


class YOLOLoss(nn.Module):
    """``(raw_outputs, targets) -> (total, parts)`` for :class:`SpikingYOLO` outputs.

    Args:
        anchors: per scale, the (w, h) anchors in input pixels.
        strides: per scale, the stride in input pixels.
        num_classes: K.
        box_weight, obj_weight, cls_weight: weights of the three terms.
        match_iou: wh-IoU above which an anchor also predicts a box (besides the best anchor).
        ignore_iou: a non-assigned prediction whose decoded box has IoU above this with any
            ground truth of its image is not trained as background.
        scale_balance: optional per-scale weights of the objectness term.
        scale_xy: YOLOv4 centre scaling, must match post-processing.
    """

    def __init__(self, anchors: Anchors = SPYV4_ANCHORS, strides: Sequence[int] = SPYV4_STRIDES,
                 num_classes: int = 20, box_weight: float = 2.0, obj_weight: float = 1.0, cls_weight: float = 1.0,
                 match_iou: float = 0.213, ignore_iou: float = 0.7, scale_balance: Sequence[float] | None = None,
                 scale_xy: float = DEFAULT_SCALE_XY) -> None:
        super().__init__()
        self.anchors = check_anchors(anchors, strides)
        self.strides = list(strides)
        self.num_classes = num_classes
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        self.match_iou, self.ignore_iou, self.scale_xy = match_iou, ignore_iou, scale_xy
        self.scale_balance = list(scale_balance) if scale_balance is not None else [1.0] * len(self.strides)
        if len(self.scale_balance) != len(self.strides):
            raise ValueError("scale_balance needs one weight per scale")

    def forward(self, raw_outputs: Sequence[Tensor], targets: Sequence[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """Args:
            raw_outputs: per scale ``[B, A_i, H_i, W_i, 5 + K]``.
            targets: B dicts with ``boxes`` ``[N, 4]`` xyxy input pixels and ``labels`` ``[N]``.

        Returns:
            ``total`` (scalar) and ``parts`` ``{"box", "obj", "cls"}`` (weighted scalars, still on the
            autograd graph: detach before logging) plus ``"num_pos"`` (positives in the batch).
        """
        if len(raw_outputs) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} scales, got {len(raw_outputs)}")
        raw_outputs = [r.float() for r in raw_outputs]  # pixel-scale IoU terms overflow in float16
        batch = raw_outputs[0].shape[0]
        gt = pad_targets(targets, raw_outputs[0])
        sizes = [tuple(r.shape[2:4]) for r in raw_outputs]
        scale_targets = build_targets(gt, self.anchors, self.strides, sizes, self.num_classes, self.match_iou)
        box = obj = cls = num_pos = raw_outputs[0].new_zeros(())
        for raw, anchors, stride, target, balance in zip(raw_outputs, self.anchors, self.strides, scale_targets,
                                                          self.scale_balance):
            pred = decode_boxes(raw, anchors, stride, self.scale_xy)  # [B, A, H, W, 4]
            pos = target.positive
            posf = pos.to(raw.dtype)
            # Non-positive cells compare the prediction with itself (zero loss, finite gradient).
            goal = torch.where(pos[..., None], target.boxes, pred.detach())
            box = box + (complete_box_iou_loss(pred, goal) * posf).sum()
            cls = cls + (F.binary_cross_entropy_with_logits(raw[..., 5:], target.classes, reduction="none")
                         .sum(-1) * posf).sum()
            best = max_iou_with_targets(pred.detach().flatten(1, 3), gt).view_as(posf)
            weight = (pos | (best <= self.ignore_iou)).to(raw.dtype)
            obj = obj + balance * (F.binary_cross_entropy_with_logits(raw[..., 4], posf, reduction="none")
                                   * weight).sum()
            num_pos = num_pos + posf.sum()
        parts = {"box": self.box_weight * box / batch, "obj": self.obj_weight * obj / batch,
                 "cls": self.cls_weight * cls / batch}
        total = parts["box"] + parts["obj"] + parts["cls"]
        return total, {**parts, "num_pos": num_pos.detach()}
