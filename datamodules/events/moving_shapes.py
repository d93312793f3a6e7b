"""Embedded event detection: shapes moving over a simulated event sensor, with exact boxes over time.

Nothing is downloaded; every split is drawn from ``numpy.random.default_rng([seed, split])``.
Each sequence holds 1..``max_objects`` shapes (classes ``class_names``, a subset of
:data:`datamodules.classification.procedural.SHAPE_NAMES`), each brighter or darker than the background and
moving on a straight line (random heading, ``speed`` pixels per step, the whole path inside the
sensor). ``num_steps + 1`` intensity images are rendered; step ``t`` holds an ON event (channel
0) where the intensity rose by more than 0.05 from image ``t`` to ``t + 1`` and an OFF event
(channel 1) where it fell, plus background noise events with probability ``noise`` per pixel,
polarity and step. The box of an object at step ``t`` is the exact extent of its rendered
coverage (>= 0.5) in image ``t + 1``: where it is at the end of the step. Options make it harder
(:class:`Harder`, all off by default): unlabelled distractor shapes, shapes entering or leaving the
sensor (boxes clipped to it), speed changes, hot pixels, per-pixel threshold noise.

Samples follow the batch contract of :mod:`datamodules.detection.base` with ``images``
``[B, T, 2, S, S]``; ``boxes`` are those of the last step, and ``track_boxes`` ``[N, T, 4]``
holds every step's boxes (for streaming and per-step evaluation). Training samples can be flipped,
zoomed and shifted with their boxes (:class:`~datamodules.events.frames.EventAugment`, off by default);
augmented samples carry no ``track_boxes``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.detection.base import FrameDetectionDataModule
from datamodules.events.frames import EventAugment
from datamodules.classification.procedural import SHAPE_NAMES, render_shapes

DEFAULT_CLASSES = ["disc", "square", "triangle", "plus"]


@dataclass(frozen=True)
class Harder:
    """What makes the embedded set harder; all off by default, which leaves the data exactly as it was
    (every draw for these comes after the default ones).

    Attributes:
        distractors: shape ids (:data:`SHAPE_NAMES`) of moving shapes that carry no class (not labelled).
        max_distractors: distractors per sequence, 0..max.
        enter_leave: probability that a shape's path crosses a sensor edge (entering or leaving: its
            centre passes within 1.3 radii of the edge, inside or out); boxes are clipped to the sensor and
            a shape not in view at the last step is not labelled.
        speed_change: probability that a shape changes speed (x0.25 to x2.5) at a random step.
        hot_pixels: pixels per sequence that fire at every step (one polarity each).
        threshold_noise: spread of the per-pixel contrast threshold (log-normal around 0.05).
    """

    distractors: tuple[int, ...] = ()
    max_distractors: int = 0
    enter_leave: float = 0.0
    speed_change: float = 0.0
    hot_pixels: int = 0
    threshold_noise: float = 0.0


def _boxes_from_masks(masks: Tensor) -> Tensor:
    """``[N, S, S]`` coverage -> ``[N, 4]`` xyxy extents of coverage >= 0.5 (end exclusive; zeros where none)."""
    on = masks >= 0.5
    cols, rows = on.any(dim=1), on.any(dim=2)  # [N, S] each
    index = torch.arange(masks.shape[-1])
    x0 = torch.where(cols, index, masks.shape[-1]).min(dim=1).values
    x1 = torch.where(cols, index + 1, 0).max(dim=1).values
    y0 = torch.where(rows, index, masks.shape[-1]).min(dim=1).values
    y1 = torch.where(rows, index + 1, 0).max(dim=1).values
    return torch.stack([x0, y0, x1, y1], dim=1).float() * cols.any(dim=1, keepdim=True)


def _draw_objects(rng: np.random.Generator, counts: np.ndarray, size: int, steps: int, num_classes: int,
                  speed: tuple[float, float]) -> dict[str, np.ndarray]:
    """``counts[s]`` objects of sequence ``s`` (flattened over sequences): sequence, class, radius, angle,
    contrast, velocity and path ``[steps + 1]`` (whole path inside the sensor)."""
    seq = np.repeat(np.arange(len(counts)), counts)
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
            "contrast": rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 1.0, m), "vx": vx, "vy": vy,
            "cx": x0[:, None] + vx[:, None] * t, "cy": y0[:, None] + vy[:, None] * t}


def _vary_paths(rng: np.random.Generator, obj: dict[str, np.ndarray], size: int, steps: int, harder: Harder) -> None:
    """Speed changes and edge crossings (:class:`Harder`), drawn for every object, applied to those chosen."""
    m = len(obj["seq"])
    factor = np.where(rng.random(m) < harder.speed_change, rng.uniform(0.25, 2.5, m), 1.0)
    at = rng.integers(min(2, steps), steps + 1, m)  # the first step moved at the new speed (after one at the old)
    travelled = np.concatenate([np.zeros((m, 1)), np.cumsum(np.where(np.arange(1, steps + 1) >= at[:, None],
                                                                     factor[:, None], 1.0), axis=1)], axis=1)
    dx, dy = obj["vx"][:, None] * travelled, obj["vy"][:, None] * travelled  # offsets from the start [m, steps + 1]
    margin = obj["radius"] * 1.3 + 1
    x0 = rng.uniform(margin - dx.min(1), size - 1 - margin - dx.max(1))
    y0 = rng.uniform(margin - dy.min(1), size - 1 - margin - dy.max(1))
    edge = rng.random(m) < harder.enter_leave
    side, across = rng.integers(0, 4, m), rng.uniform(-1.3, 1.3, m) * obj["radius"]  # <0: centre outside
    along = rng.uniform(obj["radius"], size - 1 - obj["radius"])
    line = np.where(side % 2 == 0, across, size - 1 - across)  # the crossing's coordinate across the edge
    mid_x, mid_y = np.where(side < 2, line, along), np.where(side < 2, along, line)  # sides 0, 1: x; 2, 3: y
    half = steps // 2
    x0 = np.where(edge, mid_x - dx[:, half], x0)
    y0 = np.where(edge, mid_y - dy[:, half], y0)
    moved = edge | (factor != 1.0)
    obj["cx"] = np.where(moved[:, None], x0[:, None] + dx, obj["cx"])
    obj["cy"] = np.where(moved[:, None], y0[:, None] + dy, obj["cy"])


def draw_scene(rng: np.random.Generator, n: int, size: int, steps: int, max_objects: int, class_ids: list[int],
               speed: tuple[float, float], harder: Harder) -> dict[str, np.ndarray]:
    """Every object of ``n`` sequences (labelled shapes, then distractors with label -1): ``seq``, ``shape`` id,
    ``label``, radius, angle, contrast and path ``cx, cy [steps + 1]``."""
    obj = _draw_objects(rng, rng.integers(1, max_objects + 1, n), size, steps, len(class_ids), speed)
    obj["shape"], obj["label"] = np.asarray(class_ids)[obj["cls"]], obj["cls"]
    if harder.max_distractors > 0:
        extra = _draw_objects(rng, rng.integers(0, harder.max_distractors + 1, n), size, steps,
                              len(harder.distractors), speed)
        extra["shape"], extra["label"] = np.asarray(harder.distractors)[extra["cls"]], np.full(len(extra["cls"]), -1)
        obj = {key: np.concatenate([obj[key], extra[key]]) for key in obj}
    if harder.enter_leave or harder.speed_change:
        _vary_paths(rng, obj, size, steps, harder)
    return obj


def _thresholds(seeds: np.ndarray | None, spread: float, size: int) -> Tensor | float:
    """Per-pixel contrast thresholds ``[k, 1, S, S]`` of the sequences with these seeds (or 0.05 for all)."""
    if seeds is None:
        return 0.05
    draws = [np.random.default_rng(seed).standard_normal((size, size)) for seed in seeds]
    return torch.from_numpy(0.05 * np.exp(spread * np.stack(draws))).float().unsqueeze(1)


def generate_moving_detection(n: int, size: int, steps: int, max_objects: int, class_ids: list[int], noise: float,
                              rng: np.random.Generator, speed: tuple[float, float] = (0.5, 2.0),
                              chunk: int = 128, harder: Harder = Harder()) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Event frames ``[n, steps, 2, size, size]`` uint8 and per sequence ``{"labels" [N], "track_boxes" [N, T, 4]}``.

    ``class_ids`` index :data:`SHAPE_NAMES`; labels index ``class_ids``. All randomness is drawn
    up front, so ``chunk`` (sequences rendered at once) only bounds memory. ``harder``: see :class:`Harder`;
    the targets hold the labelled shapes in view at the last step (all of them by default).
    """
    obj = draw_scene(rng, n, size, steps, max_objects, class_ids, speed, harder)
    noise_draws = rng.binomial(n * steps * 2 * size * size, noise) if noise > 0 else 0
    noise_at = rng.integers(0, n * steps * 2 * size * size, noise_draws)
    hot = rng.integers(0, [size, size, 2], (n, harder.hot_pixels, 3)) if harder.hot_pixels else None  # x, y, p
    seeds = rng.integers(0, 2 ** 63, n) if harder.threshold_noise else None
    events = torch.empty(n, steps, 2, size, size, dtype=torch.uint8)
    tracks = torch.empty(len(obj["seq"]), steps, 4)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    for start in range(0, n, chunk):
        sel = np.nonzero((obj["seq"] >= start) & (obj["seq"] < start + chunk))[0]
        k = len(sel)
        rep = lambda a: f32(np.repeat(a[sel], steps + 1))  # noqa: E731
        masks = render_shapes(torch.from_numpy(obj["shape"][sel]).repeat_interleave(steps + 1),
                              f32(obj["cx"][sel].ravel()), f32(obj["cy"][sel].ravel()), rep(obj["radius"]),
                              rep(obj["angle"]), size)
        masks = masks.view(k, steps + 1, size, size)
        tracks[sel] = _boxes_from_masks(masks[:, 1:].reshape(-1, size, size)).view(k, steps, 4)
        scene = torch.zeros(min(chunk, n - start), steps + 1, size, size)
        signed = masks * f32(obj["contrast"][sel]).view(k, 1, 1, 1)
        scene.index_add_(0, torch.from_numpy(obj["seq"][sel] - start), signed)
        diff = scene[:, 1:] - scene[:, :-1]
        threshold = _thresholds(None if seeds is None else seeds[start:start + len(scene)], harder.threshold_noise,
                                size)
        events[start:start + len(scene)] = torch.stack([diff > threshold, diff < -threshold], dim=2)
    events.view(-1)[torch.from_numpy(noise_at)] = 1
    if hot is not None:  # at every step
        x, y, p = torch.from_numpy(hot.reshape(-1, 3)).unbind(1)
        events[torch.arange(n).repeat_interleave(harder.hot_pixels), :, p, y, x] = 1
    return events, _targets(obj, tracks, n)


def _targets(obj: dict[str, np.ndarray], tracks: Tensor, n: int) -> list[dict[str, Tensor]]:
    """Per sequence the labelled shapes in view at the last step: labels and boxes of every step."""
    shown = (obj["label"] >= 0) & (tracks[:, -1, 2:] > 0).all(1).numpy()
    targets = []
    for s in range(n):
        mine = torch.from_numpy(np.nonzero((obj["seq"] == s) & shown)[0])
        targets.append({"labels": torch.from_numpy(obj["label"])[mine].long(), "track_boxes": tracks[mine]})
    return targets


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
        distractors: shapes that move among the others unlabelled (names; None: every shape not in
            ``class_names``), ``max_distractors`` per sequence (0: none).
        enter_leave / speed_change / hot_pixels / threshold_noise: see :class:`Harder` (0: off).
        hflip / zoom / translate: training augmentation, see :class:`~datamodules.events.frames.EventAugment`.
    """

    in_channels = 2
    _split_ids = {"train": 0, "val": 1, "test": 2}

    def __init__(self, num_train: int = 2048, num_val: int = 256, num_test: int = 256, image_size: int = 96,
                 num_steps: int = 4, max_objects: int = 3, class_names: list[str] | None = None,
                 speed: tuple[float, float] = (0.5, 2.0), noise: float = 0.002, distractors: list[str] | None = None,
                 max_distractors: int = 0, enter_leave: float = 0.0, speed_change: float = 0.0, hot_pixels: int = 0,
                 threshold_noise: float = 0.0, hflip: float = 0.0, zoom: tuple[float, float] | None = None,
                 translate: float = 0.0, batch_size: int = 16, num_workers: int = 0, seed: int = 0) -> None:
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
        self.harder = _harder(names, distractors, max_distractors, enter_leave, speed_change, hot_pixels,
                              threshold_noise)
        self.event_augment = EventAugment(hflip, zoom, translate)

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    def make_dataset(self, split: str, transform: Any) -> MovingShapesDetectionDataset:
        rng = np.random.default_rng([self.seed, self._split_ids[split]])
        ids = [SHAPE_NAMES.index(c) for c in self._names]
        return MovingShapesDetectionDataset(*generate_moving_detection(
            self.sizes[split], self.image_size, self.num_steps, self.max_objects, ids, self.noise, rng, self.speed,
            harder=self.harder), augment=self.event_augment if split == "train" else None)


def _harder(class_names: list[str], distractors: list[str] | None, max_distractors: int, enter_leave: float,
            speed_change: float, hot_pixels: int, threshold_noise: float) -> Harder:
    """The datamodule's :class:`Harder`, its values checked (errors name the argument)."""
    names = [c for c in SHAPE_NAMES if c not in class_names] if distractors is None else list(distractors)
    wrong = [c for c in names if c not in SHAPE_NAMES or c in class_names]
    if wrong or (max_distractors > 0 and not names):
        raise ValueError(f"distractors {wrong or names} must be names from {SHAPE_NAMES} that are not in class_names")
    if max_distractors < 0 or hot_pixels < 0 or threshold_noise < 0 or not (0 <= enter_leave <= 1 and
                                                                          0 <= speed_change <= 1):
        raise ValueError(f"need max_distractors >= 0, hot_pixels >= 0, threshold_noise >= 0 and enter_leave, "
                         f"speed_change in [0, 1]; got {max_distractors}, {hot_pixels}, {threshold_noise}, "
                         f"{enter_leave}, {speed_change}")
    return Harder(tuple(SHAPE_NAMES.index(c) for c in names), max_distractors, enter_leave, speed_change, hot_pixels,
                  threshold_noise)
