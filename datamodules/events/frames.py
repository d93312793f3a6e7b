"""Events -> frames ``[T, P, H, W]``: tonic's ``ToFrame`` with a fixed T, and a fast time binner.

``FixedFrames`` wraps ``tonic.transforms.ToFrame`` (by time window, event count or number of
time bins) and always returns exactly ``num_steps`` frames of shape ``[P, H, W]``: it never calls
``ToFrame`` on an empty recording (tonic 1.7 returns a ``(T, P, W, H)`` float64 array there, the
axes swapped on a non-square sensor), pads short recordings with empty frames at the end and
keeps the first ``num_steps`` frames of long ones.

``bin_events`` counts the events of ``[t_start, t_end)`` into T equal time bins with one
``np.bincount`` (used for GEN1 windows and moving shapes, where windows are often empty).

``EventAugment`` flips, zooms and shifts event frames ``[T, P, S, S]`` with their boxes, every frame
the same way (the augmentation of event detectors, e.g. RVT's flips and zooms).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tonic.transforms import ToFrame
from torchvision import tv_tensors
from torchvision.transforms import v2

Sensor = tuple[int, int, int]  # tonic's (W, H, P)


def empty_frames(num_steps: int, sensor_size: Sensor) -> np.ndarray:
    """``[T, P, H, W]`` int16 zeros."""
    width, height, polarities = sensor_size
    return np.zeros((num_steps, polarities, height, width), np.int16)


@dataclass
class FixedFrames:
    """tonic ``ToFrame`` that always yields ``[num_steps, P, H, W]`` int16 frames.

    Exactly one of ``time_window`` (us), ``event_count`` or ``n_time_bins`` is set; with
    ``n_time_bins`` it must equal ``num_steps``. ``start_time`` anchors time windows at the
    start of the recording (tonic's default: the first event).
    """

    sensor_size: Sensor
    num_steps: int
    time_window: float | None = None
    event_count: int | None = None
    n_time_bins: int | None = None
    start_time: float | None = None

    def __post_init__(self) -> None:
        chosen = [k for k in ("time_window", "event_count", "n_time_bins") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("frames: set exactly one of time_window, event_count, n_time_bins; "
                             f"got {chosen or 'none'}")
        if self.n_time_bins is not None and self.n_time_bins != self.num_steps:
            raise ValueError(f"frames: n_time_bins={self.n_time_bins} must equal num_steps={self.num_steps}")
        if self.num_steps < 1:
            raise ValueError(f"frames: num_steps must be >= 1, got {self.num_steps}")
        self._to_frame = ToFrame(sensor_size=tuple(self.sensor_size), time_window=self.time_window,
                                 event_count=self.event_count, n_time_bins=self.n_time_bins,
                                 include_incomplete=self.n_time_bins is None, start_time=self.start_time)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = empty_frames(self.num_steps, self.sensor_size)
        if len(events) == 0:
            return out
        frames = self._to_frame(events)
        if frames.shape[1:] != out.shape[1:]:  # never expected: tonic changed its layout
            raise RuntimeError(f"tonic ToFrame returned frames of shape {frames.shape}, expected [T, *{out.shape[1:]}]")
        count = min(len(frames), self.num_steps)
        out[:count] = frames[:count]
        return out


def bin_events(events: np.ndarray, sensor_size: Sensor, num_steps: int, t_start: int, t_end: int) -> np.ndarray:
    """Count events with ``t_start <= t < t_end`` into ``num_steps`` equal time bins.

    Args:
        events: structured array with fields t, x, y, p (p in {0, 1}).
        sensor_size: (W, H, P); events outside the sensor are dropped.
    Returns:
        ``[num_steps, P, H, W]`` int16 counts (saturating); bin ``k`` covers
        ``[t_start + k * d, t_start + (k + 1) * d)`` with ``d = (t_end - t_start) / num_steps``.
    """
    width, height, polarities = sensor_size
    if t_end <= t_start:
        raise ValueError(f"bin_events: empty time range [{t_start}, {t_end})")
    t = events["t"].astype(np.int64) - t_start
    x, y, p = events["x"].astype(np.int64), events["y"].astype(np.int64), events["p"].astype(np.int64)
    keep = (t >= 0) & (t < t_end - t_start) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    keep &= (p >= 0) & (p < polarities)
    step = t[keep] * num_steps // (t_end - t_start)
    index = ((step * polarities + p[keep]) * height + y[keep]) * width + x[keep]
    counts = np.bincount(index, minlength=num_steps * polarities * height * width)
    return np.minimum(counts, np.iinfo(np.int16).max).reshape(num_steps, polarities, height, width).astype(np.int16)


@dataclass
class EventAugment:
    """Random geometric augmentation of event frames ``[T, P, S, S]`` and their boxes, every frame alike.

    A zoom by a factor drawn uniformly from ``zoom`` (``> 1`` zooms in, ``< 1`` out, about the frame's
    centre) and a shift by up to ``translate`` of the side in x and y (one ``v2.RandomAffine``), then a
    horizontal flip with probability ``hflip`` (``v2.RandomHorizontalFlip``); frames are resampled by the
    nearest neighbour, so counts stay counts (a zoom-out leaves some pixels' events out) and empty space
    holds no event. Boxes move exactly with the pixels, are clamped to the frame, and those left under
    ``min_size`` pixels wide or high are dropped (``v2.SanitizeBoundingBoxes``). Draws come from torch's
    generator (a loader worker's is seeded from the loader's seed and epoch).
    """

    hflip: float = 0.0
    zoom: tuple[float, float] | None = None
    translate: float = 0.0
    min_size: float = 2.0
    _pipeline: v2.Compose = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.hflip <= 1 or not 0 <= self.translate < 1 or (
                self.zoom is not None and not 0 < self.zoom[0] <= self.zoom[1]):
            raise ValueError(f"event augmentation: need 0 <= hflip <= 1, 0 <= translate < 1 and 0 < zoom[0] <= "
                             f"zoom[1]; got hflip={self.hflip}, translate={self.translate}, zoom={self.zoom}")
        steps: list[v2.Transform] = []
        if self.zoom is not None or self.translate:
            shift = (self.translate, self.translate) if self.translate else None
            steps.append(v2.RandomAffine(degrees=0, translate=shift, scale=self.zoom))  # nearest by default
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(self.hflip))
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=self.min_size, labels_getter=_kept)]
        self._pipeline = v2.Compose(steps)

    @property
    def active(self) -> bool:
        return bool(self.hflip or self.zoom is not None or self.translate)

    def __call__(self, frames: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``frames [T, P, S, S]``, ``boxes [N, 4]`` xyxy frame pixels -> frames, boxes ``[M, 4]`` and the index
        ``[M]`` of each kept box among the N."""
        size = tuple(frames.shape[-2:])
        video = tv_tensors.Video(frames)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
                  "index": torch.arange(len(boxes))}
        video, target = self._pipeline(video, target)
        return video.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), target["index"]


def _kept(inputs: tuple) -> torch.Tensor:
    """``labels_getter`` of :class:`EventAugment`'s sanitiser: the index of each box."""
    return inputs[1]["index"]
