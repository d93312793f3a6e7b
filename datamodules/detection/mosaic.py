"""Box-aware mosaic augmentation: four training images tiled around a random centre (docs/paper.md:
the reference's optional mosaic, ``data.init_args.mosaic``).

A mosaic is built from source images before the training pipeline: image ``k`` of four fills
quadrant ``k`` (top-left, top-right, bottom-left, bottom-right) of an ``S x S`` canvas split at the
centre ``(cx, cy)``. Each image is scaled, keeping its aspect ratio, just enough to cover its
quadrant, its corner placed at the centre, and what overflows the quadrant is cut off. Boxes move
with the pixels and then follow the box rule of :mod:`datamodules.detection.validation` within their quadrant
(clipped to it; dropped if empty). The result is one uint8 ``[3, S, S]`` image and one
:class:`~datamodules.detection.base.DetectionRecord`, which the usual training pipeline then treats as a
source image, so samples keep the batch contract of :mod:`datamodules.detection.base`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from datamodules.detection.validation import clean_box_array

if TYPE_CHECKING:
    from datamodules.detection.base import DetectionRecord

CENTRE_RANGE = (0.25, 0.75)  # the centre is uniform in [0.25 S, 0.75 S] on each axis


def quadrants(size: int, centre: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the four quadrants of ``[0, size]^2`` split at ``centre = (cx, cy)``."""
    cx, cy = centre
    return [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]


def place(image: torch.Tensor, boxes: np.ndarray, quadrant: tuple[int, int, int, int], corner: tuple[bool, bool]
          ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Scale uint8 ``image [3, H, W]`` to cover ``quadrant`` and cut it to it.

    Args:
        boxes: float ``[N, 4]`` xyxy in ``image`` pixels.
        quadrant: ``(x0, y0, x1, y1)`` on the canvas.
        corner: ``(right, bottom)``: whether the image's right (bottom) edge sits at the quadrant's
            right (bottom) edge, i.e. at the centre for the left (top) quadrants.

    Returns:
        ``(tile [3, y1 - y0, x1 - x0], canvas boxes [M, 4] inside the quadrant, keep mask [N])``.
    """
    x0, y0, x1, y1 = quadrant
    height, width = image.shape[-2:]
    scale = max((x1 - x0) / width, (y1 - y0) / height)
    new_h, new_w = max(math.ceil(height * scale), y1 - y0), max(math.ceil(width * scale), x1 - x0)
    resized = F.resize(image, [new_h, new_w], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    left = new_w - (x1 - x0) if corner[0] else 0  # columns of the resized image cut off on the left
    top = new_h - (y1 - y0) if corner[1] else 0
    tile = resized[:, top:top + y1 - y0, left:left + x1 - x0]
    sx, sy = new_w / width, new_h / height
    moved = np.asarray(boxes, np.float64).reshape(-1, 4) * [sx, sy, sx, sy] - [left, top, left, top]
    kept, keep, _ = clean_box_array(moved, y1 - y0, x1 - x0)
    return tile, kept + np.asarray([x0, y0, x0, y0], np.float32), keep


def tile_mosaic(images: list[torch.Tensor], boxes: list[np.ndarray], size: int, centre: tuple[int, int]
                ) -> tuple[torch.Tensor, list[np.ndarray], list[np.ndarray]]:
    """Four uint8 ``[3, H_k, W_k]`` images and their ``[N_k, 4]`` xyxy boxes tiled around ``centre``.

    Returns:
        ``(canvas uint8 [3, size, size], canvas boxes per image [M_k, 4] float32, keep masks [N_k])``.
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(f"a mosaic needs 4 images and 4 box arrays, got {len(images)} and {len(boxes)}")
    canvas = images[0].new_zeros((3, size, size))
    out_boxes, keeps = [], []
    for k, (image, quadrant) in enumerate(zip(images, quadrants(size, centre))):
        tile, kept, keep = place(image, boxes[k], quadrant, corner=(k % 2 == 0, k < 2))
        x0, y0, x1, y1 = quadrant
        canvas[:, y0:y1, x0:x1] = tile
        out_boxes.append(kept)
        keeps.append(keep)
    return canvas, out_boxes, keeps


class Mosaic:
    """With probability ``p``, replace a training image by a mosaic of it and three others of the split.

    Draws (whether, the three partners with replacement, the centre) come from torch's global RNG
    like every other random transform here, so they are seeded and resumed as those are
    (docs/troubleshooting.md, "Resuming is exact").

    Args:
        p: probability in [0, 1] (0: never).
        size: side S of the square mosaic (the network input side).
    """

    def __init__(self, p: float, size: int) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {p!r}")
        if size <= 0:
            raise ValueError(f"mosaic size must be positive, got {size}")
        self.p, self.size = float(p), size

    def draw(self, index: int, length: int) -> tuple[list[int], tuple[int, int]] | None:
        """``([index, 3 partner indices], centre)``, or ``None`` when this sample is left as it is."""
        if float(torch.rand(())) >= self.p:
            return None
        partners = torch.randint(length, (3,)).tolist()
        low, high = (round(f * self.size) for f in CENTRE_RANGE)
        cx, cy = torch.randint(low, high + 1, (2,)).tolist()
        return [index, *partners], (cx, cy)

    def __call__(self, load: Callable[[int], tuple[torch.Tensor, DetectionRecord]], index: int, length: int
                 ) -> tuple[torch.Tensor, DetectionRecord]:
        """``load(index)`` (uint8 image ``[3, H, W]``, record), or a mosaic image ``[3, S, S]`` and its record."""
        drawn = self.draw(index, length)
        if drawn is None:
            return load(index)
        indices, centre = drawn
        images, records = zip(*(load(i) for i in indices))
        canvas, boxes, keeps = tile_mosaic(list(images), [r.boxes for r in records], self.size, centre)
        return canvas, replace(records[0], boxes=np.concatenate(boxes).reshape(-1, 4),
                               labels=np.concatenate([r.labels[m] for r, m in zip(records, keeps)]),
                               difficult=np.concatenate([r.difficult[m] for r, m in zip(records, keeps)]),
                               path=None, name=f"mosaic of {', '.join(r.name or str(r.image_id) for r in records)}")
