"""Embedded default classification data: procedural shapes, generated from a seed.

Nothing is downloaded or read from disk. Every split is drawn at ``setup`` into
tensors by vectorised rendering, from its own random stream
(``numpy.random.default_rng([seed, split])``), so the same seed always gives the
same tensors and one split never depends on the size of another.

- ``ShapesClassificationDataModule``: static grayscale images ``[1, H, W]``; the
  label is the shape.
- ``MovingShapesClassificationDataModule``: event-like sequences ``[T, 2, H, W]``
  (ON/OFF polarity of the frame-to-frame difference) of a shape moving in one of
  8 directions; the label is the direction. The shape is randomly brighter or
  darker than the background, which swaps ON and OFF: one frame cannot tell
  "east" from "west", so the task needs memory over time.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.common import SplitLoaders

# Signed distance (approximate, in units of the shape radius; negative inside)
# of each shape at rotated, radius-normalised coordinates (u, v).
_SDF = Callable[[Tensor, Tensor], Tensor]


def _plus(u: Tensor, v: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(u.abs() - 0.3, v.abs() - 1.0),
                         torch.maximum(u.abs() - 1.0, v.abs() - 0.3))


SHAPES: dict[str, _SDF] = {
    "disc": lambda u, v: torch.hypot(u, v) - 1.0,
    "ring": lambda u, v: (torch.hypot(u, v) - 0.75).abs() - 0.25,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) - 0.85,
    "hollow_square": lambda u, v: (torch.maximum(u.abs(), v.abs()) - 0.7).abs() - 0.2,
    "triangle": lambda u, v: torch.maximum(torch.maximum(v, -0.866 * u - 0.5 * v),
                                           0.866 * u - 0.5 * v) - 0.5,
    "plus": _plus,
    "x_cross": lambda u, v: _plus((u + v) * 0.7071, (u - v) * 0.7071),
    "horizontal_bar": lambda u, v: torch.maximum(u.abs() - 1.0, v.abs() - 0.25),
    "vertical_bar": lambda u, v: torch.maximum(u.abs() - 0.25, v.abs() - 1.0),
    "diamond": lambda u, v: (u.abs() + v.abs() - 1.0) * 0.7071,
}
SHAPE_NAMES: list[str] = list(SHAPES)
# Directions of motion, counter-clockwise from east; image y grows downward.
DIRECTION_NAMES: list[str] = ["east", "north_east", "north", "north_west",
                              "west", "south_west", "south", "south_east"]


def render_shapes(shape_ids: Tensor, cx: Tensor, cy: Tensor, radius: Tensor,
                  angle: Tensor, size: int) -> Tensor:
    """Anti-aliased shape masks in [0, 1].

    Args:
        shape_ids: ``[N]`` long, index into ``SHAPE_NAMES``.
        cx, cy, radius: ``[N]`` float, centre and radius in pixels.
        angle: ``[N]`` float, rotation in radians.
        size: image height and width.
    Returns:
        ``[N, size, size]`` float32 coverage masks.
    """
    grid = torch.arange(size, dtype=torch.float32)
    out = torch.empty(len(shape_ids), size, size)
    for k, sdf in enumerate(SHAPES.values()):
        m = (shape_ids == k).nonzero().squeeze(1)
        if len(m) == 0:
            continue
        dx = grid.view(1, 1, size) - cx[m].view(-1, 1, 1)
        dy = grid.view(1, size, 1) - cy[m].view(-1, 1, 1)
        cos, sin = angle[m].cos().view(-1, 1, 1), angle[m].sin().view(-1, 1, 1)
        r = radius[m].view(-1, 1, 1)
        u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
        out[m] = (0.5 - sdf(u, v) * r).clamp_(0.0, 1.0)  # pixel distance -> coverage, 1-pixel soft edge
    return out


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """``[n]`` labels, each class ``n // num_classes`` or one more times, shuffled."""
    return rng.permutation(np.arange(n) % num_classes)


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def generate_shapes(n: int, size: int, noise: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Static shapes: random shape, position, size, rotation (+-15 deg), brightness.

    Returns:
        images ``[n, 1, size, size]`` float32 in [0, 1], labels ``[n]`` long.
    """
    labels = _balanced_labels(rng, n, len(SHAPES))
    radius = rng.uniform(0.18, 0.34, n) * size
    margin = radius * 1.05
    cx = rng.uniform(margin, size - 1 - margin)
    cy = rng.uniform(margin, size - 1 - margin)
    angle = rng.uniform(-math.pi / 12, math.pi / 12, n)
    brightness = rng.uniform(0.6, 1.0, (n, 1, 1))
    background = rng.uniform(0.0, 0.2, (n, 1, 1))
    masks = render_shapes(torch.from_numpy(labels), _t(cx), _t(cy), _t(radius), _t(angle), size)
    images = _t(background + noise * rng.standard_normal((n, size, size))) + masks * _t(brightness)
    return images.clamp_(0.0, 1.0).unsqueeze(1), torch.from_numpy(labels).long()


def _trajectories(labels: np.ndarray, radius: np.ndarray, size: int, steps: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[n, steps + 1]`` (x, y) of straight paths heading ``label * 45 deg`` (+-9 deg).

    The path is about ``size / 4`` long whatever ``steps``; it stays inside the image.
    """
    n = len(labels)
    heading = labels * (math.pi / 4) + rng.uniform(-0.15, 0.15, n)
    speed = rng.uniform(0.7, 1.3, n) * size / 32 * 8 / steps  # pixels per step
    vx, vy = speed * np.cos(heading), -speed * np.sin(heading)  # image y grows downward
    margin = radius * 1.05
    mid_x = rng.uniform(margin + np.abs(vx) * steps / 2, size - 1 - margin - np.abs(vx) * steps / 2)
    mid_y = rng.uniform(margin + np.abs(vy) * steps / 2, size - 1 - margin - np.abs(vy) * steps / 2)
    offsets = np.arange(steps + 1) - steps / 2  # time relative to the middle of the path
    return mid_x[:, None] + offsets * vx[:, None], mid_y[:, None] + offsets * vy[:, None]


def generate_moving_shapes(n: int, size: int, steps: int, noise: float,
                           rng: np.random.Generator, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Event frames of a random shape moving in one of 8 directions.

    ``steps + 1`` intensity frames are rendered; frame ``t`` of the output holds
    ON (channel 0) where the intensity rose by more than 0.05 from frame t to
    t+1 and OFF (channel 1) where it fell, plus background events with
    probability ``noise`` per pixel and polarity. All randomness is drawn up
    front, so ``chunk`` (sequences rendered at once) only bounds memory.

    Returns:
        events ``[n, steps, 2, size, size]`` uint8 in {0, 1}, labels ``[n]`` long.
    """
    labels = _balanced_labels(rng, n, len(DIRECTION_NAMES))
    shape_ids = torch.from_numpy(rng.integers(0, len(SHAPES), n))
    radius = rng.uniform(0.1, 0.16, n) * size
    cx, cy = _trajectories(labels, radius, size, steps, rng)
    angle = rng.uniform(-math.pi / 12, math.pi / 12, n)
    contrast = _t(rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.0, n)).view(n, 1, 1, 1)
    per_frame = [_t(cx.ravel()), _t(cy.ravel()), _t(np.repeat(radius, steps + 1)),
                 _t(np.repeat(angle, steps + 1))]  # [n * (T+1)] each, sequence-major
    ids = shape_ids.repeat_interleave(steps + 1)
    events = torch.empty(n, steps, 2, size, size, dtype=torch.uint8)
    for s in range(0, n, chunk):
        e, fs = min(s + chunk, n), slice(s * (steps + 1), min(s + chunk, n) * (steps + 1))
        frames = render_shapes(ids[fs], *(a[fs] for a in per_frame), size)
        frames = frames.view(e - s, steps + 1, size, size) * contrast[s:e]
        diff = frames[:, 1:] - frames[:, :-1]
        events[s:e] = torch.stack([diff > 0.05, diff < -0.05], dim=2)
    if noise > 0:  # sparse background events: ~noise * numel positions, drawn with replacement
        flat = events.view(-1)
        flat[torch.from_numpy(rng.integers(0, flat.numel(), rng.binomial(flat.numel(), noise)))] = 1
    return events, torch.from_numpy(labels).long()


class _FloatDataset(Dataset):
    """``(x[i].float(), y[i])`` pairs over stored tensors (events stay uint8 in memory)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i].float(), self.y[i]


class _ProceduralDataModule(SplitLoaders, LightningDataModule):
    """Shared split handling: each split generated once, on first ``setup`` needing it."""

    _split_ids = {"train": 0, "val": 1, "test": 2}

    def __init__(self, num_train: int, num_val: int, num_test: int, image_size: int,
                 seed: int, batch_size: int, num_workers: int, noise: float) -> None:
        super().__init__()
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                           ("image_size", image_size), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {key} must be >= 1, got {value}")
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"{type(self).__name__}: noise must be in [0, 1), got {noise}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size, self.seed, self.noise = image_size, seed, noise
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict[str, _FloatDataset] = {}

    def _generate(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def split(self, name: str) -> _FloatDataset:
        """The dataset of split ``name`` ('train', 'val' or 'test'), generated on first use."""
        if name not in self.datasets:
            rng = np.random.default_rng([self.seed, self._split_ids[name]])
            self.datasets[name] = _FloatDataset(*self._generate(self.sizes[name], rng))
        return self.datasets[name]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for name in needed.get(stage or "", ["train", "val", "test"]):
            self.split(name)

    def split_dataset(self, split: str) -> _FloatDataset:
        return self.split(split)


class ShapesClassificationDataModule(_ProceduralDataModule):
    """Static procedural shapes; batches ``(x [B, 1, H, W] float in [0, 1], y [B] long)``.

    10 classes (``SHAPE_NAMES``), balanced; random position, radius 18-34% of the
    image, rotation +-15 deg, brightness, background level and Gaussian pixel
    noise of std ``noise``.
    """

    def __init__(self, num_train: int = 4000, num_val: int = 1000, num_test: int = 1000,
                 image_size: int = 32, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0, noise: float = 0.1) -> None:
        super().__init__(num_train, num_val, num_test, image_size, seed, batch_size, num_workers, noise)
        self.save_hyperparameters()
        self.num_classes: int = len(SHAPE_NAMES)
        self.class_names: list[str] = list(SHAPE_NAMES)
        self.in_channels: int = 1

    def _generate(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        return generate_shapes(n, self.image_size, self.noise, rng)


class MovingShapesClassificationDataModule(_ProceduralDataModule):
    """Moving-shape event sequences; batches ``(x [B, T, 2, H, W] float in {0, 1}, y [B] long)``.

    The label is one of 8 directions (``DIRECTION_NAMES``), balanced; channel 0
    holds ON events, channel 1 OFF events. ``noise`` is the probability of a
    spurious event per pixel, polarity and step.
    """

    def __init__(self, num_train: int = 4000, num_val: int = 1000, num_test: int = 1000,
                 image_size: int = 32, num_steps: int = 8, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0, noise: float = 0.002) -> None:
        super().__init__(num_train, num_val, num_test, image_size, seed, batch_size, num_workers, noise)
        if num_steps < 2:
            raise ValueError(f"MovingShapesClassificationDataModule: num_steps must be >= 2, got {num_steps}")
        self.save_hyperparameters()
        self.num_steps = num_steps
        self.num_classes: int = len(DIRECTION_NAMES)
        self.class_names: list[str] = list(DIRECTION_NAMES)
        self.in_channels: int = 2

    def _generate(self, n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        return generate_moving_shapes(n, self.image_size, self.num_steps, self.noise, rng)
