"""The YOLO geometry: one object that the model, the loss and the post-processing all read.

A :class:`YOLOGeometry` holds every anchor ``(w, h)`` in input pixels, the anchor ``masks`` of
each scale (indices into ``anchors``, scales ordered by increasing stride), the ``strides``, and
the decoding constants::

    xy = (sigmoid(t_xy) * scale_xy - (scale_xy - 1) / 2 + grid) * stride
    wh = exp(clamp(t_wh, *log_wh_clamp)) * anchor          (no clamp when log_wh_clamp is None)

SPYv4 (YOLOv4-tiny) has six anchors ``10,14 23,27 37,58 81,82 135,169 344,319`` at 416x416 with
masks ``(1, 2, 3)`` at stride 16 and ``(3, 4, 5)`` at stride 32: anchor 0 belongs to no scale and
anchor 3 to both (docs/paper.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: SPYv4 / YOLOv4-tiny: all six anchors at 416x416 input, and the anchors each scale predicts with.
SPYV4_ALL_ANCHORS: tuple[tuple[float, float], ...] = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
SPYV4_MASKS: tuple[tuple[int, ...], ...] = ((1, 2, 3), (3, 4, 5))
SPYV4_STRIDES: tuple[int, ...] = (16, 32)
SPYV4_ANCHORS: list[list[tuple[float, float]]] = [[SPYV4_ALL_ANCHORS[i] for i in m] for m in SPYV4_MASKS]
REFERENCE_SIZE = 416  # the input side the SPYv4 anchors were chosen for
#: YOLOv4-tiny's ``scale_x_y``: lets the centre reach the cell borders without saturating the sigmoid.
DEFAULT_SCALE_XY = 1.05
#: ``t_wh`` is clamped to this range before ``exp`` (a box 1/3000 to ~55x its anchor), so boxes are
#: never degenerate (CIoU's aspect term divides by the height) nor infinite.
LOG_WH_RANGE = (-8.0, 4.0)

Anchors = Sequence[Sequence[Sequence[float]]]  # per scale, per anchor: (w, h) in input pixels


@dataclass(frozen=True)
class YOLOGeometry:
    """Anchors, masks, strides and decoding constants of a YOLO model (see the module docstring)."""

    anchors: tuple[tuple[float, float], ...]
    masks: tuple[tuple[int, ...], ...]
    strides: tuple[int, ...]
    scale_xy: float = DEFAULT_SCALE_XY
    log_wh_clamp: tuple[float, float] | None = LOG_WH_RANGE

    def __post_init__(self) -> None:
        anchors = tuple((float(w), float(h)) for w, h in self.anchors)
        if not anchors or any(not (w > 0 and h > 0) or math.isinf(w + h) for w, h in anchors):
            raise ValueError(f"anchors must be a non-empty list of positive (w, h): {list(self.anchors)}")
        masks = tuple(tuple(int(i) for i in m) for m in self.masks)
        strides = tuple(int(s) for s in self.strides)
        if len(masks) != len(strides):
            raise ValueError(f"{len(masks)} anchor masks for {len(strides)} scales (strides {list(strides)}); "
                             "give one mask (or one list of (w, h) anchors) per scale")
        if any(not m or any(not 0 <= i < len(anchors) for i in m) for m in masks):
            raise ValueError(f"anchor masks {[list(m) for m in masks]} must be non-empty lists of indices "
                             f"into the {len(anchors)} anchors")
        clamp = None if self.log_wh_clamp is None else tuple(float(v) for v in self.log_wh_clamp)
        if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
            raise ValueError(f"log_wh_clamp must be (low, high) with low < high or None, got {self.log_wh_clamp}")
        object.__setattr__(self, "anchors", anchors)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "scale_xy", float(self.scale_xy))
        object.__setattr__(self, "log_wh_clamp", clamp)

    @property
    def scale_anchors(self) -> list[list[tuple[float, float]]]:
        """Per scale, the ``(w, h)`` anchors it predicts with (``anchors[mask]``)."""
        return [[self.anchors[i] for i in mask] for mask in self.masks]

    @property
    def num_anchors(self) -> list[int]:
        return [len(mask) for mask in self.masks]

    @classmethod
    def from_scales(cls, anchors: Anchors, strides: Sequence[int], **decoding) -> "YOLOGeometry":
        """From per-scale anchor lists: equal anchors of different scales become one shared anchor."""
        unique: list[tuple[float, float]] = []
        masks = []
        for scale in anchors:
            mask = []
            for w, h in scale:
                pair = (float(w), float(h))
                if pair not in unique:
                    unique.append(pair)
                mask.append(unique.index(pair))
            masks.append(mask)
        if len(anchors) != len(strides):
            raise ValueError(f"{len(anchors)} anchor groups for {len(strides)} scales (strides {list(strides)}); "
                             "give one list of (w, h) anchors per scale")
        return cls(tuple(unique), tuple(tuple(m) for m in masks), tuple(strides), **decoding)

    @classmethod
    def spyv4(cls, image_size: int = REFERENCE_SIZE, **decoding) -> "YOLOGeometry":
        """SPYv4's six anchors and masks, scaled from 416x416 to ``image_size``, strides (16, 32)."""
        return cls(tuple(scale_anchor_list(SPYV4_ALL_ANCHORS, image_size)), SPYV4_MASKS, SPYV4_STRIDES, **decoding)


def scale_anchor_list(anchors: Sequence[Sequence[float]], image_size: int) -> list[tuple[float, float]]:
    """``(w, h)`` anchors chosen at 416x416 scaled to ``image_size`` (identical at 416)."""
    factor = image_size / REFERENCE_SIZE
    return [(w * factor, h * factor) for w, h in anchors]


def scaled_anchors(image_size: int) -> list[list[tuple[float, float]]]:
    """SPYv4's per-scale anchors scaled from 416x416 to ``image_size``."""
    return YOLOGeometry.spyv4(image_size).scale_anchors
