"""Embedded default detection data: procedural coloured shapes, generated from a seed (no download).

Each image is a function of ``(seed, split, index)`` only: a textured, noisy background, a few
small distractors (lines, dots: clutter the detector must ignore) and 1..max_objects filled
shapes of 5 classes at several sizes (at least ``min_size`` of the image side), possibly
overlapping. Boxes are the exact pixel extent of each drawn shape (amodal: an occluded shape
keeps its full box).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.detection.base import DetectionDataModule, Transform, make_record, make_sample
from datamodules.detection.transforms import eval_transform, train_transform

CLASS_NAMES = ["circle", "square", "triangle", "diamond", "cross"]
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class ShapesScene:
    """One generated image with its ground truth.

    Attributes:
        image: uint8 ``[S, S, 3]``.
        boxes: float32 ``[N, 4]`` xyxy pixel-edge boxes (``x2 = last column + 1``).
        labels: int64 ``[N]`` indices into ``CLASS_NAMES``.
        colors: uint8 ``[N, 3]`` fill colour of each shape (before noise).
        owner: int16 ``[S, S]``: index of the shape visible at each pixel, -1 elsewhere.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    colors: np.ndarray
    owner: np.ndarray


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of shape ``label`` on coordinates normalised to its box, ``u, v`` in [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    if label == 0:
        return u * u + v * v <= 1.0
    if label == 1:
        return (au <= 1.0) & (av <= 1.0)
    if label == 2:  # upward triangle: apex at v = -1, base at v = 1
        return (av <= 1.0) & (au <= (v + 1.0) / 2.0)
    if label == 3:
        return au + av <= 1.0
    if label == 4:
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    raise ValueError(f"unknown shape label {label}; expected 0..{len(CLASS_NAMES) - 1}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float ``[S, S, 3]``: dark linear gradient between two colours plus a low-frequency ripple."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(20, 110, size=(2, 3)).astype(np.float32)
    freq, phase = rng.uniform(1.0, 3.0, size=2), rng.uniform(0, 2 * np.pi)
    ripple = 10.0 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)
    return t[..., None] * c1 + (1 - t[..., None]) * c0 + ripple[..., None]


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Draw ``count`` distractors in place: thin line segments and small dots (smaller than any shape)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for _ in range(count):
        color = rng.uniform(60, 255, size=3).astype(np.float32)
        p = rng.uniform(0, size, size=2)
        if rng.random() < 0.5:
            d = rng.normal(size=2)
            q = p + d / np.linalg.norm(d) * rng.uniform(size / 8, size / 3)
            seg = q - p
            t = np.clip(((xx - p[0]) * seg[0] + (yy - p[1]) * seg[1]) / float(seg @ seg), 0, 1)
            dist = np.hypot(xx - p[0] - t * seg[0], yy - p[1] - t * seg[1])
            mask = dist <= rng.uniform(0.5, 1.0)
        else:
            mask = np.hypot(xx - p[0], yy - p[1]) <= rng.uniform(1.0, max(1.5, size / 32))
        image[mask] = color


def _bright_color(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.8, 1.0))
    return np.round(np.array(rgb) * 255).astype(np.uint8)


def _overlap(box: np.ndarray, others: list[np.ndarray]) -> float:
    """Largest intersection over the smaller box's area: bounds how much either shape can be hidden."""
    if not others:
        return 0.0
    o = np.stack(others)
    iw = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
    inter = iw * ih
    return float((inter / np.minimum(_area(box), _area(o))).max())


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _place(rng: np.random.Generator, label: int, size: int, min_size: float, max_size: float,
           placed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Sample a placement whose box overlaps earlier ones by at most 30% of the smaller box.

    Returns ``(full mask [S, S], box [4])``, or ``None`` when 10 tries found no room.
    """
    for _ in range(10):
        short = size * np.exp(rng.uniform(np.log(min_size), np.log(max_size)))
        long = min(short * rng.uniform(1.0, 1.25), size - 2.0)
        w, h = (short, long) if rng.random() < 0.5 else (long, short)
        cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
        x0, y0 = int(np.floor(cx - w / 2)), int(np.floor(cy - h / 2))
        x1, y1 = int(np.ceil(cx + w / 2)), int(np.ceil(cy + h / 2))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        local = shape_mask(label, (xx - cx) / (w / 2), (yy - cy) / (h / 2))
        ys, xs = np.nonzero(local)
        box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float32)
        if _overlap(box, placed) <= 0.3:
            mask = np.zeros((size, size), bool)
            mask[y0:y1, x0:x1] = local
            return mask, box
    return None


def render_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 4, min_size: float = 0.125,
                 max_size: float = 0.45, clutter: int = 3, noise: float = 6.0) -> ShapesScene:
    """Generate one scene from ``rng`` (see module docstring); ``min_size/max_size`` are fractions of ``size``."""
    image = _background(rng, size)
    _clutter(rng, image, int(rng.integers(0, clutter + 1)))
    owner = np.full((size, size), -1, np.int16)
    boxes, labels, colors = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        placed = _place(rng, label, size, min_size, max_size, boxes)
        if placed is None:
            continue
        mask, box = placed
        color = _bright_color(rng)
        image[mask] = color
        owner[mask] = len(boxes)
        boxes.append(box)
        labels.append(label)
        colors.append(color)
    image += rng.normal(0.0, noise, size=image.shape).astype(np.float32) if noise > 0 else 0.0
    return ShapesScene(np.clip(np.round(image), 0, 255).astype(np.uint8),
                       np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                       np.asarray(colors, np.uint8).reshape(-1, 3), owner)


class SceneDataset(Dataset):
    """``length`` procedural scenes of one split, each rendered on the fly from ``(seed, split, index)``
    by the subclass's ``render_scene(rng, **scene)``, whose ``image`` is uint8 ``[H, W, 3]`` or grey
    ``[H, W]`` (shown as 3 equal channels), with ``boxes`` ``[N, 4]`` and ``labels`` ``[N]``."""

    kind = "shapes"
    names: list[str] = CLASS_NAMES
    render_scene = staticmethod(render_scene)

    def __init__(self, length: int, split: str, seed: int, transform: Transform, **scene: Any) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"{self.kind} split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        self.length, self.split, self.seed = length, split, seed
        self.transform, self.scene = transform, scene
        self.class_names = list(self.names)

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(f"{self.kind} {self.split} index {index} out of range [0, {self.length})")
        return self.render_scene(np.random.default_rng([self.seed, SPLIT_CODES[self.split], index]), **self.scene)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.render(index)
        record = make_record(index + 1, scene.boxes, scene.labels, np.zeros(len(scene.labels), bool),
                             name=f"{self.kind}/{self.split}/{index}")
        image = torch.from_numpy(scene.image)
        image = image[None].expand(3, -1, -1) if image.dim() == 2 else image.permute(2, 0, 1)
        return make_sample(image.contiguous(), record, self.transform)


class ShapesDataset(SceneDataset):
    """Procedural coloured shapes scenes (:func:`render_scene`)."""


class ShapesDetectionDataModule(DetectionDataModule):
    """Procedural shapes detection (5 classes), the default that needs no files. Test split = val split.

    Args:
        num_train, num_val: images per split.
        image_size: side S of the generated (and network input) square images.
        max_objects: at most this many shapes per image (at least one).
        min_size, max_size: shape side range as fractions of S.
        clutter: at most this many distractors per image.
        noise: std of the Gaussian pixel noise (uint8 units).
        batch_size, num_workers, seed, augment: see :class:`DetectionDataModule`; augmentation is
            colour jitter and horizontal flip.
        crop: add the random zoom-out and IoU crop of :func:`~datamodules.detection.transforms.train_transform`
            (off by default: the scenes already vary in size and place; with a few hundred training
            images it is what keeps the detector from memorising them, docs/learning.md).
    """

    def __init__(self, num_train: int = 4096, num_val: int = 512, image_size: int = 128, max_objects: int = 4,
                 min_size: float = 0.125, max_size: float = 0.45, clutter: int = 3, noise: float = 6.0,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, augment: bool = True,
                 crop: bool = False) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                         seed=seed, augment=augment)
        self.crop = crop
        if not 0 < min_size <= max_size < 1:
            raise ValueError(f"need 0 < min_size <= max_size < 1, got min_size={min_size}, max_size={max_size}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.num_train, self.num_val = num_train, num_val
        self.scene = dict(size=image_size, max_objects=max_objects, min_size=min_size, max_size=max_size,
                          clutter=clutter, noise=noise)

    dataset_class: type[SceneDataset] = ShapesDataset

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset_class.names)

    def train_transform(self) -> Transform:
        return train_transform(self.image_size, crop=self.crop) if self.augment else eval_transform(self.image_size)

    def make_dataset(self, split: str, transform: Transform) -> Dataset:
        length = self.num_train if split == "train" else self.num_val
        return self.dataset_class(length, split, self.seed, transform, **self.scene)

    def test_is_val(self) -> bool:
        return True
