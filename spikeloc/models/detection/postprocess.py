"""Post-processing: decode raw outputs, score, threshold, class-wise NMS, keep the best per image."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .anchors import decode
from .geometry import YOLOGeometry

Detections = list[dict[str, Tensor]]


class YOLOPostprocess:
    """Raw outputs -> per image ``{"boxes": [M, 4] xyxy input pixels, "scores": [M], "labels": [M]}``.

    ``score = objectness * class probability``; with ``multi_label`` every (box, class) pair with
    ``score >= conf_threshold`` is a candidate (standard for mAP evaluation), otherwise only the
    best class of each box (the reference). Per image at most ``pre_nms_top_k`` candidates
    (``None``: all) enter class-wise NMS (``torchvision.ops.batched_nms``) and the best
    ``max_detections`` (``None``: all, the reference) are kept, sorted by score. ``geometry`` is the
    model's (default SPYv4's at 416x416), so decoding is the loss's.
    The reference protocol: ``conf_threshold=0.001, iou_threshold=0.5, max_detections=None,
    pre_nms_top_k=None, multi_label=False``.
    """

    def __init__(self, conf_threshold: float = 0.005, iou_threshold: float = 0.45, max_detections: int | None = 100,
                 geometry: YOLOGeometry | None = None, pre_nms_top_k: int | None = 1000,
                 multi_label: bool = True) -> None:
        self.conf_threshold, self.iou_threshold, self.max_detections = conf_threshold, iou_threshold, max_detections
        self.geometry = geometry if geometry is not None else YOLOGeometry.spyv4()
        self.pre_nms_top_k, self.multi_label = pre_nms_top_k, multi_label

    def decode_all(self, raw_outputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-scale raw ``[B, A_i, H_i, W_i, 5 + K]`` -> boxes ``[B, P, 4]``, scores ``[B, P, K]``."""
        boxes, scores = [], []
        for index, raw in enumerate(raw_outputs):
            box, obj, cls = decode(raw.float(), self.geometry, index)
            boxes.append(box.flatten(1, 3))
            scores.append((obj[..., None] * cls).flatten(1, 3))
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)

    def select(self, boxes: Tensor, scores: Tensor) -> Detections:
        """Threshold, NMS and cap: boxes ``[B, P, 4]``, scores ``[B, P, K]`` -> B detection dicts."""
        batch, _, num_classes = scores.shape
        if self.multi_label:
            flat, labels = scores.flatten(1), None  # [B, P * K]
        else:
            flat, labels = scores.max(dim=-1)  # [B, P]
        k = flat.shape[1] if self.pre_nms_top_k is None else min(self.pre_nms_top_k, flat.shape[1])
        top, index = flat.topk(k, dim=1)  # [B, k]
        keep = top >= self.conf_threshold
        image = torch.arange(batch, device=scores.device)[:, None].expand(batch, k)[keep]
        index, top = index[keep], top[keep]
        if self.multi_label:
            prior, label = index // num_classes, index % num_classes
        else:
            prior, label = index, labels[image, index]
        box = boxes[image, prior]
        kept = batched_nms(box, top, image * num_classes + label, self.iou_threshold)  # by decreasing score
        out = []
        for i in range(batch):
            mine = kept[image[kept] == i][: self.max_detections]  # [:None] keeps all
            out.append({"boxes": box[mine], "scores": top[mine], "labels": label[mine]})
        return out

    @torch.no_grad()
    def __call__(self, raw_outputs: Sequence[Tensor]) -> Detections:
        """Per-scale raw outputs ``[B, A_i, H_i, W_i, 5 + K]`` -> B detection dicts (input pixels)."""
        return self.select(*self.decode_all(raw_outputs))


def _pair(value) -> tuple[float, float]:
    values = value.tolist() if isinstance(value, Tensor) else value
    if isinstance(values, (int, float)):
        return float(values), float(values)
    return float(values[0]), float(values[1])


def to_original_boxes(boxes: Tensor, scale: float | Sequence[float] | Tensor, pad: Sequence[float] | Tensor,
                      orig_size: Sequence[int] | Tensor, clip: bool = True) -> Tensor:
    """Input-pixel boxes ``[M, 4]`` -> original-image boxes, inverting ``input = orig * scale + pad``
    and, with ``clip`` (``False``: as the paper's code), clipping to ``orig_size`` = (h, w). ``scale`` is
    one factor (letterbox) or ``(s_x, s_y)`` (a plain resize to the square input)."""
    pad_x, pad_y = _pair(pad)
    scale_x, scale_y = _pair(scale)
    height, width = _pair(orig_size)
    offset = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
    original = (boxes - offset) / boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    return clip_boxes_to_image(original, (int(height), int(width))) if clip else original


def detections_to_original(detections: Detections, targets: Sequence[dict], clip: bool = True) -> Detections:
    """Map every image's detections to its original coordinates using the target's
    ``scale``, ``pad`` and ``orig_size`` (clipped to the image with ``clip``); scores and labels are kept."""
    return [{**det, "boxes": to_original_boxes(det["boxes"], tgt["scale"], tgt["pad"], tgt["orig_size"], clip)}
            for det, tgt in zip(detections, targets)]
