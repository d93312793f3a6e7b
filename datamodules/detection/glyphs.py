"""Embedded fine-grained detection data: grayscale glyphs on textured, cluttered backgrounds (no download).

Each image is a function of ``(seed, split, index)`` only. A grayscale background (gradient,
low-frequency texture, ripple, slight blur) carries stroke-like clutter (lines, arcs, rings,
dots) and 1..max_objects glyphs: the ten digits, drawn with the scalable font that ships with
Pillow (``ImageFont.load_default(size=...)``, Pillow >= 10.1) at a random size, stroke width,
rotation and aspect, in a grey level contrasting with the local background, with per-pixel
stroke noise, then Gaussian pixel noise over everything. Glyphs overlap at most slightly (a
digit that is half hidden changes identity). Boxes are the exact pixel extent of each drawn
glyph. Images are grey, stored as three equal channels (the batch contract's RGB).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
from PIL import ImageFont

from datamodules.detection.base import Transform
from datamodules.detection.shapes import SceneDataset, ShapesDetectionDataModule
from datamodules.detection.transforms import train_transform

CLASS_NAMES = [str(digit) for digit in range(10)]
GLYPH_HEIGHT = 0.72  # height of a digit's ink / font size for Pillow's default font


@dataclass(frozen=True)
class GlyphScene:
    """One generated image: uint8 ``image`` ``[S, S]``, float32 ``boxes`` ``[N, 4]`` xyxy pixel edges
    (``x2 = last column + 1``), int64 ``labels`` ``[N]``, int16 ``owner`` ``[S, S]`` (glyph drawn at
    each pixel, -1 elsewhere)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    owner: np.ndarray


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float ``[S, S]`` background: grey gradient, smooth random texture and a ripple."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    image = rng.uniform(50, 200) + rng.uniform(-50, 50) * (np.cos(angle) * xx + np.sin(angle) * yy - 0.5)
    cells = int(rng.integers(3, 9))
    coarse = PIL.Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32), mode="F")
    image += rng.uniform(5, 25) * np.asarray(coarse.resize((size, size), PIL.Image.BICUBIC))
    freq, phase = rng.uniform(2.0, 8.0, size=2), rng.uniform(0, 2 * np.pi)
    image += rng.uniform(0, 12) * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)
    return image


def _clutter(rng: np.random.Generator, image: PIL.Image.Image, count: int) -> None:
    """Draw ``count`` stroke-like distractors in place: lines, arcs, rings and dots."""
    draw, size = PIL.ImageDraw.Draw(image), image.size[0]
    for _ in range(count):
        fill = int(rng.integers(0, 256))
        width = int(rng.integers(1, 4))
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(size / 40, size / 8)
        kind = rng.integers(4)
        if kind == 0:
            dx, dy = rng.normal(size=2) * rng.uniform(size / 10, size / 3)
            draw.line([(x, y), (x + dx, y + dy)], fill=fill, width=width)
        elif kind == 1:
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(60, 200), fill=fill, width=width)
        elif kind == 2:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=fill, width=width)
        else:
            d = rng.uniform(1.0, 3.0)
            draw.ellipse([x - d, y - d, x + d, y + d], fill=fill)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels, decoded once per size (and per loader worker)."""
    return ImageFont.load_default(size=size)


def render_glyph(rng: np.random.Generator, label: int, height: float) -> np.ndarray:
    """Bool mask of one digit about ``height`` pixels tall: random stroke width, aspect and rotation,
    cropped to its exact extent."""
    font_size = max(6, int(round(height / GLYPH_HEIGHT)))
    stroke = int(rng.integers(0, max(1, font_size // 14) + 1))
    canvas = PIL.Image.new("L", (2 * font_size, 2 * font_size), 0)
    PIL.ImageDraw.Draw(canvas).text((font_size // 2, font_size // 4), CLASS_NAMES[label], fill=255,
                                    font=_font(font_size), stroke_width=stroke, stroke_fill=255)
    aspect = rng.uniform(0.8, 1.25)
    canvas = canvas.resize((max(1, int(round(canvas.width * aspect))), canvas.height), PIL.Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-20, 20), resample=PIL.Image.BILINEAR, expand=True)
    mask = np.asarray(canvas) >= 128
    ys, xs = np.nonzero(mask)
    return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _overlaps(box: np.ndarray, placed: list[np.ndarray], limit: float) -> bool:
    """Whether ``box`` covers more than ``limit`` of its own or any placed box's area."""
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0 and iw * ih > limit * min(_area(box), _area(other)):
            return True
    return False


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    """Draw ``mask`` at ``(x0, y0)`` in a grey level contrasting with the background under it, with
    per-pixel stroke noise."""
    h, w = mask.shape
    region = image[y0:y0 + h, x0:x0 + w]
    mean = float(region.mean())
    contrast = rng.uniform(60, 130)
    level = mean + contrast if (mean < 128) == (rng.random() < 0.85) else mean - contrast
    level = float(np.clip(level, 0, 255))
    region[mask] = level + rng.normal(0, rng.uniform(2, 15), size=int(mask.sum()))


def render_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 4, min_size: float = 0.15,
                 max_size: float = 0.35, clutter: int = 6, noise: float = 8.0) -> GlyphScene:
    """Generate one scene from ``rng`` (see module docstring); ``min_size/max_size`` bound a glyph's
    height as fractions of ``size``."""
    background = PIL.Image.fromarray(np.clip(_texture(rng, size), 0, 255).astype(np.uint8))
    _clutter(rng, background, int(rng.integers(0, clutter + 1)))
    background = background.filter(PIL.ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
    image = np.asarray(background).astype(np.float32)
    owner = np.full((size, size), -1, np.int16)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        mask = render_glyph(rng, label, size * np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        h, w = mask.shape
        if h >= size or w >= size:
            continue
        for _ in range(10):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if not _overlaps(box, boxes, 0.1):
                _paint(rng, image, mask, x0, y0)
                owner[y0:y0 + h, x0:x0 + w][mask] = len(boxes)
                boxes.append(box)
                labels.append(label)
                break
    if noise > 0:
        image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    return GlyphScene(np.clip(np.round(image), 0, 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(labels, np.int64), owner)


class GlyphsDataset(SceneDataset):
    """Procedural grayscale digit scenes (:func:`render_scene`)."""

    kind, names = "glyphs", CLASS_NAMES
    render_scene = staticmethod(render_scene)


class GlyphsDetectionDataModule(ShapesDetectionDataModule):
    """Procedural grayscale digits detection (10 fine-grained classes). Test split = val split.

    Args:
        num_train, num_val: images per split.
        image_size: side S of the generated (and network input) square images.
        max_objects: at most this many glyphs per image (at least one).
        min_size, max_size: glyph height range as fractions of S (defaults: 19..45 px at 128).
        clutter: at most this many stroke-like distractors per image.
        noise: std of the Gaussian pixel noise (uint8 units).
        batch_size, num_workers, seed, augment: see :class:`DetectionDataModule`; augmentation is
            brightness/contrast jitter (no flip: it would turn digits into other shapes).
        crop: see :class:`ShapesDetectionDataModule`.
    """

    dataset_class = GlyphsDataset

    def __init__(self, num_train: int = 4096, num_val: int = 512, image_size: int = 128, max_objects: int = 4,
                 min_size: float = 0.15, max_size: float = 0.35, clutter: int = 6, noise: float = 8.0,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, augment: bool = True,
                 crop: bool = False) -> None:
        super().__init__(num_train, num_val, image_size, max_objects, min_size, max_size, clutter, noise,
                         batch_size, num_workers, seed, augment, crop)

    def train_transform(self) -> Transform:
        return (train_transform(self.image_size, crop=self.crop, flip=False, grayscale=True) if self.augment
                else self.eval_transform())
