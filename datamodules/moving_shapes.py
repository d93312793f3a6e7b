"""Embedded event detection: shapes moving over a simulated event sensor, with exact boxes over time.

Nothing is downloaded; every split is drawn from ``numpy.random.default_rng([seed, split])``.
Each sequence holds 1..``max_objects`` shapes (classes ``class_names``, a subset of
:data:`datamodules.procedural.SHAPE_NAMES`), each brighter or darker than the background and
moving on a straight line (random heading, ``speed`` pixels per step, the whole path inside the
sensor). ``num_steps + 1`` intensity images are rendered; step ``t`` holds an ON event (channel
0) where the intensity rose by more than 0.05 from image ``t`` to ``t + 1`` and an OFF event
(channel 1) where it fell, plus background noise events with probability ``noise`` per pixel,
polarity and step. The box of an object at step ``t`` is the exact extent of its rendered
coverage (>= 0.5) in image ``t + 1``: where it is at the end of the step.

Samples follow the batch contract of :mod:`datamodules.detection` with ``images``
``[B, T, 2, S, S]``; ``boxes`` are those of the last step, and ``track_boxes`` ``[N, T, 4]``
holds every step's boxes (for streaming and per-step evaluation). Training samples can be flipped,
zoomed and shifted with their boxes (:class:`~datamodules.frames.EventAugment`, off by default);
augmented samples carry no ``track_boxes``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.detection import FrameDetectionDataModule
from datamodules.frames import EventAugment
from datamodules.procedural import SHAPE_NAMES, render_shapes

DEFAULT_CLASSES = ["disc", "square", "triangle", "plus"]


def _boxes_from_masks(masks: Tensor) -> Tensor:
    """``[N, S, S]`` coverage -> ``[N, 4]`` xyxy extents of coverage >= 0.5 (end exclusive)."""
    on = masks >= 0.5
    cols, rows = on.any(dim=1), on.any(dim=2)  # [N, S] each
    index = torch.arange(masks.shape[-1])
    x0 = torch.where(cols, index, masks.shape[-1]).min(dim=1).values
    x1 = torch.where(cols, index + 1, 0).max(dim=1).values
    y0 = torch.where(rows, index, masks.shape[-1]).min(dim=1).values
    y1 = torch.where(rows, index + 1, 0).max(dim=1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def _draw_objects(rng: np.random.Generator, n: int, size: int, steps: int, max_objects: int, num_classes: int,
                  speed: tuple[float, float]) -> dict[str, np.ndarray]:
    """Per object (flattened over sequences): sequence, class, radius, angle, contrast, path [steps+1]."""
    counts = rng.integers(1, max_objects + 1, n)
    seq = np.repeat(np.arange(n), counts)
    m = len(seq)
    radius = rng.uniform(0.08, 0.15, m) * size
    heading = rng.uniform(0, 2 * math.pi, m)
    velocity = rng.uniform(*speed, m)
    vx, vy = velocity * np.cos(heading), velocity * np.sin(heading)
    margin = radius * 1.3 + 1
    x0 = rng.uniform(margin + np.maximum(0, -vx * steps), size - 1 - margin - np.maximum(0, vx * steps))
    y0 = rng.uniform(margin + np.maximum(0, -vy * steps), size - 1 - margin - np.maximum(0, vy * steps))
    t = np.arange(steps + 1)
    return {"seq": seq, "cls": rng.integers(0, num_classes, m), "radius": radius,
            "angle": rng.uniform(-math.pi / 12, math.pi / 12, m),
            "contrast": rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 1.0, m),
            "cx": x0[:, None] + vx[:, None] * t, "cy": y0[:, None] + vy[:, None] * t}


def generate_moving_detection(n: int, size: int, steps: int, max_objects: int, class_ids: list[int], noise: float,
                              rng: np.random.Generator, speed: tuple[float, float] = (0.5, 2.0),
                              chunk: int = 128) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Event frames ``[n, steps, 2, size, size]`` uint8 and per sequence ``{"labels" [N], "track_boxes" [N, T, 4]}``.

    ``class_ids`` index :data:`SHAPE_NAMES`; labels index ``class_ids``. All randomness is drawn
    up front, so ``chunk`` (sequences rendered at once) only bounds memory.
    """
    obj = _draw_objects(rng, n, size, steps, max_objects, len(class_ids), speed)
    noise_draws = rng.binomial(n * steps * 2 * size * size, noise) if noise > 0 else 0
    noise_at = rng.integers(0, n * steps * 2 * size * size, noise_draws)
    shapes = torch.as_tensor(class_ids)[torch.from_numpy(obj["cls"])]
    events = torch.empty(n, steps, 2, size, size, dtype=torch.uint8)
    tracks = torch.empty(len(obj["seq"]), steps, 4)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    for start in range(0, n, chunk):
        sel = np.nonzero((obj["seq"] >= start) & (obj["seq"] < start + chunk))[0]
        k = len(sel)
        rep = lambda a: f32(np.repeat(a[sel], steps + 1))  # noqa: E731
        masks = render_shapes(shapes[sel].repeat_interleave(steps + 1), f32(obj["cx"][sel].ravel()),
                              f32(obj["cy"][sel].ravel()), rep(obj["radius"]), rep(obj["angle"]), size)
        masks = masks.view(k, steps + 1, size, size)
        tracks[sel] = _boxes_from_masks(masks[:, 1:].reshape(-1, size, size)).view(k, steps, 4)
        scene = torch.zeros(min(chunk, n - start), steps + 1, size, size)
        signed = masks * f32(obj["contrast"][sel]).view(k, 1, 1, 1)
        scene.index_add_(0, torch.from_numpy(obj["seq"][sel] - start), signed)
        diff = scene[:, 1:] - scene[:, :-1]
        events[start:start + len(scene)] = torch.stack([diff > 0.05, diff < -0.05], dim=2)
    events.view(-1)[torch.from_numpy(noise_at)] = 1
    targets = []
    for s in range(n):
        mine = torch.from_numpy(np.nonzero(obj["seq"] == s)[0])
        targets.append({"labels": torch.from_numpy(obj["cls"])[mine].long(), "track_boxes": tracks[mine]})
    return events, targets


class MovingShapesDetectionDataset(Dataset):
    """Items ``{"image": [T, 2, S, S] float, "target": dict}``; boxes of the last step (``augment``: training)."""

    def __init__(self, events: Tensor, targets: list[dict[str, Tensor]], augment: EventAugment | None = None) -> None:
        self.events, self.targets, self.augment = events, targets, augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        target, image = self.targets[index], self.events[index].float()
        orig = target["track_boxes"][:, -1].clone()
        size = self.events.shape[-1]
        extra = {"track_boxes": target["track_boxes"].clone()}
        boxes, kept = orig, torch.arange(len(orig))
        if self.augment is not None and self.augment.active:
            image, boxes, kept = self.augment(image, orig)
            extra = {}
        return {"image": image, "target": {
            "boxes": boxes, "labels": target["labels"][kept], "difficult": torch.zeros(len(kept), dtype=torch.bool),
            "image_id": index + 1, "orig_size": (size, size), "orig_boxes": orig[kept], "scale": 1.0,
            "pad": (0.0, 0.0), **extra}}


class MovingShapesDetectionDataModule(FrameDetectionDataModule):
    """Embedded event detection (see the module docstring); nothing is read or downloaded.

    Args:
        num_train / num_val / num_test: sequences per split.
        image_size: sensor side S; num_steps: T; max_objects: shapes per sequence (1..max).
        class_names: shapes to detect (names from ``SHAPE_NAMES``).
        speed: (min, max) pixels per step; noise: background event probability.
        hflip / zoom / translate: training augmentation, see :class:`~datamodules.frames.EventAugment`.
    """

    in_channels = 2
    _split_ids = {"train": 0, "val": 1, "test": 2}

    def __init__(self, num_train: int = 2048, num_val: int = 256, num_test: int = 256, image_size: int = 96,
                 num_steps: int = 4, max_objects: int = 3, class_names: list[str] | None = None,
                 speed: tuple[float, float] = (0.5, 2.0), noise: float = 0.002, hflip: float = 0.0,
                 zoom: tuple[float, float] | None = None, translate: float = 0.0, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=False)
        names = list(class_names or DEFAULT_CLASSES)
        unknown = [c for c in names if c not in SHAPE_NAMES]
        if unknown or not names:
            raise ValueError(f"class_names {unknown or names} must be non-empty names from {SHAPE_NAMES}")
        if num_steps < 1 or max_objects < 1 or not 0 <= noise < 1 or not 0 < speed[0] <= speed[1]:
            raise ValueError(f"need num_steps >= 1, max_objects >= 1, 0 <= noise < 1, 0 < speed[0] <= speed[1]; "
                             f"got {num_steps}, {max_objects}, {noise}, {speed}")
        self._names, self.num_steps, self.max_objects = names, num_steps, max_objects
        self.record_resolved(class_names=names)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.speed, self.noise = tuple(speed), noise
        self.event_augment = EventAugment(hflip, zoom, translate)

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    def make_dataset(self, split: str, transform: Any) -> MovingShapesDetectionDataset:
        rng = np.random.default_rng([self.seed, self._split_ids[split]])
        ids = [SHAPE_NAMES.index(c) for c in self._names]
        return MovingShapesDetectionDataset(*generate_moving_detection(
            self.sizes[split], self.image_size, self.num_steps, self.max_objects, ids, self.noise, rng, self.speed),
            augment=self.event_augment if split == "train" else None)
