"""A simple event-camera simulator (the model of ESIM / v2e, without their optics): the scene's
log-intensity is sampled every ``frame_us``; each pixel keeps a reference level and emits an ON
(p = 1) or OFF (p = 0) event each time its log-intensity moves one contrast threshold away from it
(the reference then moves by that threshold); thresholds vary per pixel and polarity; event times
are interpolated linearly between the two frames at which the level was crossed. Background noise
(uniform random events) and hot pixels (a few pixels firing at a high constant rate) are added.

Used by :mod:`event_sets` (``benchmarks/learning.py``); everything is drawn from one
``numpy.random.Generator``, so a recording is a function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodules.events.dat import EVENT_DTYPE


@dataclass(frozen=True)
class SensorNoise:
    """Contrast thresholds ``N(threshold, threshold_std)`` per pixel and polarity (at least ``min_threshold``),
    the initial reference levels' offset from the first frame (up to ``reference_jitter`` times the smaller
    threshold), background noise events per pixel per second, hot pixels per recording and their rate (events/s)."""

    threshold: float = 0.25
    threshold_std: float = 0.04
    min_threshold: float = 0.08
    reference_jitter: float = 0.4
    background_hz: float = 0.2
    hot_pixels: tuple[int, int] = (3, 9)
    hot_hz: tuple[float, float] = (100.0, 600.0)


class EventSensor:
    """Turns log-intensity frames ``[F, H, W]`` into events, frame chunk by frame chunk.

    The state (reference level per pixel, the last frame) lives here; only pixels whose level
    changed somewhere in a chunk (or between its first frame and the last one before) are
    updated, since a pixel whose level stays put emits nothing.
    """

    def __init__(self, first: Tensor, frame_us: int, rng: np.random.Generator, noise: SensorNoise) -> None:
        height, width = first.shape
        self.frame_us, self.shape, self.frames_seen = frame_us, (height, width), 1
        draw = rng.normal(noise.threshold, noise.threshold_std, (2, height * width))
        self.thresholds = torch.from_numpy(np.maximum(draw, noise.min_threshold).astype(np.float32))  # [OFF, ON]
        offset = rng.uniform(-noise.reference_jitter, noise.reference_jitter, height * width).astype(np.float32)
        self.reference = first.flatten() + torch.from_numpy(offset) * self.thresholds.min(0).values
        self.last = first.flatten().clone()

    def __call__(self, frames: Tensor) -> np.ndarray:
        """Events (``EVENT_DTYPE``, unsorted) of the next ``F`` log-intensity frames ``[F, H, W]``."""
        if len(frames) == 0:
            return np.zeros(0, EVENT_DTYPE)
        flat = frames.reshape(len(frames), -1)
        active = ((flat != self.last).any(0)).nonzero().squeeze(1)
        levels = torch.cat([self.last[active].unsqueeze(0), flat[:, active]])  # [F + 1, n]
        reference = self.reference[active]
        off, on = self.thresholds[0, active], self.thresholds[1, active]
        before, counts = [], []
        for f in range(1, len(levels)):
            delta = levels[f] - reference
            n_on = torch.floor(delta / on).clamp_(min=0)
            n_off = torch.floor(-delta / off).clamp_(min=0)
            before.append(reference)
            counts.append(n_on - n_off)
            reference = reference + n_on * on - n_off * off
        self.reference[active] = reference
        self.last = flat[-1].clone()
        start = self.frames_seen - 1
        self.frames_seen += len(frames)
        return self._events(levels, torch.stack(before), torch.stack(counts), active, on, off, start)

    def _events(self, levels: Tensor, before: Tensor, counts: Tensor, active: Tensor, on: Tensor, off: Tensor,
                start: int) -> np.ndarray:
        """Expand signed counts ``[F, n]`` into one event per threshold crossing, its time interpolated."""
        frame, column = counts.nonzero(as_tuple=True)
        signed = counts[frame, column]
        number = signed.abs().long()
        frame, column, sign = (a.repeat_interleave(number) for a in (frame, column, signed.sign()))
        first = torch.cumsum(number, 0) - number  # index of each pixel-frame's first crossing
        crossing = torch.arange(len(frame)) - first.repeat_interleave(number) + 1  # 1, 2, ... per pixel-frame
        step = torch.where(sign > 0, on[column], -off[column])
        level = before[frame, column] + crossing * step
        low, high = levels[frame, column], levels[frame + 1, column]
        span = torch.where(high != low, high - low, torch.ones_like(high))
        fraction = torch.where(high != low, (level - low) / span, torch.ones_like(high)).clamp_(0.0, 1.0)
        t = ((start + frame).double() + fraction.double()) * self.frame_us
        pixel = active[column]
        events = np.empty(len(t), EVENT_DTYPE)
        events["t"] = t.floor().long().numpy()
        events["x"], events["y"] = (pixel % self.shape[1]).numpy(), (pixel // self.shape[1]).numpy()
        events["p"] = (sign > 0).numpy()
        return events


def noise_events(rng: np.random.Generator, duration_us: int, width: int, height: int,
                 noise: SensorNoise) -> np.ndarray:
    """Background noise (uniform over pixels, time and polarity) and hot pixels (a few pixels, each firing
    at its own constant rate with random polarity) over ``[0, duration_us)``."""
    count = rng.poisson(noise.background_hz * width * height * duration_us / 1e6)
    hot = rng.integers(*noise.hot_pixels, endpoint=True)
    rates = rng.uniform(*noise.hot_hz, hot)
    per_hot = rng.poisson(rates * duration_us / 1e6)
    total = count + int(per_hot.sum())
    events = np.empty(total, EVENT_DTYPE)
    events["t"] = rng.integers(0, duration_us, total)
    events["p"] = rng.integers(0, 2, total)
    events["x"][:count], events["y"][:count] = rng.integers(0, width, count), rng.integers(0, height, count)
    events["x"][count:] = np.repeat(rng.integers(0, width, hot), per_hot)
    events["y"][count:] = np.repeat(rng.integers(0, height, hot), per_hot)
    return events
