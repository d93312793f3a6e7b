"""The learning suite's event sets: textured objects moving over a textured static scene, seen by a
simulated 304x240 event camera (:mod:`event_camera`: contrast thresholds with per-pixel noise, event
times inside the frame interval, background noise, hot pixels), written in the Prophesee GEN1 layout
and read back through ``datamodules.events.gen1.GEN1DataModule``, the path a user takes with GEN1-like data
(``benchmarks/learning.py``, docs/learning.md).

Objects enter the sensor from outside, cross it on a straight path, change speed 1-3 times (0.3x to 2x
their first speed) and leave; distractors move the same way but carry no class and are not labelled.
Boxes are the exact extent of each object's rendered coverage (>= 0.5) at the labelled timestamp,
clipped to the sensor; one labelled timestamp every 50 ms, recordings of 3 s.

- ``silhouettes``: a textured cross and a textured ring of equal size (36-64 px), told apart only by
  shape, among discs and squares of the same size (distractors), moving in any direction.
- ``street``: cars (2:1, with wheels) and pedestrians (tall and thin) of 30-60 px height driving and
  walking roughly horizontally, among trailers (2:1, no wheels) and signs (a disc on a pole).

Each recording is a function of ``(set, split, index)`` only, so the sets are the same on every machine.
Usage: ``python benchmarks/event_sets.py [--sets ...] [--root runs/learning_sets] [--preview DIR]``.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from datamodules.events.dat import open_records, write_dat  # noqa: E402
from datamodules.events.gen1 import BBOX_DTYPE, filter_boxes, load_boxes  # noqa: E402
from event_camera import EventSensor, SensorNoise, noise_events  # noqa: E402

WIDTH, HEIGHT = 304, 240
FRAME_US, LABEL_US, CHUNK = 5_000, 50_000, 20  # simulator frame interval, label interval, frames rendered at once
SPLITS = ("train", "val", "test")
Sdf = Callable[[Tensor, Tensor], Tensor]  # signed distance in half-heights at object coordinates (u, v)


def _rect(cx: float, cy: float, hw: float, hh: float) -> Sdf:
    return lambda u, v: torch.maximum((u - cx).abs() - hw, (v - cy).abs() - hh)


def _disc(cx: float, cy: float, r: float) -> Sdf:
    return lambda u, v: torch.hypot(u - cx, v - cy) - r


def _union(*parts: Sdf) -> Sdf:
    return lambda u, v: torch.stack([part(u, v) for part in parts]).amin(0)


# name -> (half-width / half-height, signed distance); every shape spans v in [-1, 1]
SHAPES: dict[str, tuple[float, Sdf]] = {
    "cross": (1.0, _union(_rect(0, 0, 0.36, 1), _rect(0, 0, 1, 0.36))),
    "ring": (1.0, lambda u, v: (torch.hypot(u, v) - 0.72).abs() - 0.28),
    "disc": (1.0, _disc(0, 0, 1)),
    "square": (1.0, _rect(0, 0, 0.9, 0.9)),
    "car": (2.0, _union(_rect(0, 0.15, 2, 0.45), _rect(-0.1, -0.6, 1.0, 0.4), _disc(-1.25, 0.6, 0.4),
                        _disc(1.25, 0.6, 0.4))),
    "pedestrian": (0.4, _union(_disc(0, -0.78, 0.22), _rect(0, -0.2, 0.32, 0.38), _rect(-0.16, 0.6, 0.12, 0.4),
                               _rect(0.16, 0.6, 0.12, 0.4))),
    "trailer": (2.0, _rect(0, 0.1, 2, 0.9)),
    "sign": (0.5, _union(_disc(0, -0.5, 0.5), _rect(0, 0.5, 0.08, 0.5))),
}


@dataclass(frozen=True)
class EventSet:
    """One suite set: class shapes (label = index), distractor shapes, object heights (px), speeds (px/s),
    headings (``any``, or ``horizontal`` within +-0.25 rad), class objects entering per second, recordings per
    split and recording length (us)."""

    classes: tuple[str, ...]
    distractors: tuple[str, ...]
    height: tuple[float, float]
    speed: tuple[float, float]
    headings: str
    rate: float
    recordings: tuple[int, int, int]
    duration_us: int = 3_000_000


SETS = {
    "silhouettes": EventSet(("cross", "ring"), ("disc", "square"), (36.0, 64.0), (50.0, 200.0), "any", 1.5,
                            (52, 16, 16)),
    "street": EventSet(("car", "pedestrian"), ("trailer", "sign"), (30.0, 60.0), (40.0, 250.0), "horizontal", 1.5,
                       (52, 16, 16)),
}


def background(rng: np.random.Generator) -> Tensor:
    """Intensity ``[H, W]`` in (0, 1]: smooth random texture, a gradient, bright and dark rectangles."""
    def smooth(cells: tuple[int, int], amplitude: float) -> Tensor:
        coarse = torch.from_numpy(rng.normal(0, amplitude, cells).astype(np.float32))[None, None]
        return F.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=False)[0, 0]

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, HEIGHT), torch.linspace(-1, 1, WIDTH), indexing="ij")
    angle = rng.uniform(0, 2 * math.pi)
    image = rng.uniform(0.25, 0.5) + 0.1 * (math.cos(angle) * xx + math.sin(angle) * yy)
    image = image + smooth((4, 5), 0.08) + smooth((16, 20), 0.05) + smooth((60, 76), 0.03)
    for _ in range(rng.integers(6, 16)):
        x0, y0 = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        image[y0:y0 + rng.integers(4, 60), x0:x0 + rng.integers(4, 80)] *= rng.uniform(0.5, 1.6)
    return image.clamp(0.05, 1.0)


def _entry(spec: EventSet, rng: np.random.Generator, margin: float) -> tuple[float, tuple[float, float]]:
    """Heading (radians, y down) and start point ``margin`` outside a sensor edge, heading inwards."""
    if spec.headings == "horizontal":
        side = int(rng.integers(2))  # 0: from the left, 1: from the right
        normal, along = (0.0, math.pi)[side], rng.uniform(0.3, 0.95) * HEIGHT
        heading = normal + rng.uniform(-0.25, 0.25)
        return heading, ((-margin, WIDTH + margin)[side], along)
    side = int(rng.choice(4, p=np.array([HEIGHT, HEIGHT, WIDTH, WIDTH]) / (2 * (WIDTH + HEIGHT))))
    normal = (0.0, math.pi, math.pi / 2, -math.pi / 2)[side]  # left, right, top, bottom edge
    x, y = [(-margin, rng.uniform(0, HEIGHT)), (WIDTH + margin, rng.uniform(0, HEIGHT)),
            (rng.uniform(0, WIDTH), -margin), (rng.uniform(0, WIDTH), HEIGHT + margin)][side]
    return normal + rng.uniform(-1.0, 1.0), (x, y)


def frame_count(spec: EventSet) -> int:
    """Simulator frames of a recording: at 0, ``FRAME_US``, ... up to its duration."""
    return spec.duration_us // FRAME_US + 1


def draw_objects(spec: EventSet, rng: np.random.Generator) -> list[dict]:
    """Objects (classes, then distractors) with shape, label (-1: distractor), half-height, tilt, texture and
    centre per frame ``cx, cy [frames]``; each enters from outside at a random frame in [-3 s, end)."""
    frames = frame_count(spec)
    span = (spec.duration_us + 3_000_000) / 1e6
    labels = rng.integers(len(spec.classes), size=rng.poisson(spec.rate * span))
    distractors = rng.integers(len(spec.distractors), size=rng.poisson(spec.rate * span / 2))
    kinds = [(int(k), spec.classes[k]) for k in labels] + [(-1, spec.distractors[k]) for k in distractors]
    objects = []
    for label, shape in kinds:
        half = rng.uniform(*spec.height) / 2
        heading, (x, y) = _entry(spec, rng, half * math.hypot(SHAPES[shape][0], 1) + 2)
        entered = int(rng.integers(-3_000_000 // FRAME_US, spec.duration_us // FRAME_US))
        life = frames - entered  # frames from its entry to the end of the recording
        base = rng.uniform(*spec.speed) * FRAME_US / 1e6  # pixels per frame
        speed = np.full(life, base)
        for _ in range(rng.integers(1, 4)):
            speed[rng.integers(0, life):] = base * rng.uniform(0.3, 2.0)
        travelled = np.concatenate([[0.0], np.cumsum(speed[:-1])])
        since = np.arange(frames) - entered
        distance = np.where(since >= 0, travelled[np.clip(since, 0, life - 1)], -1e5)  # before entering: far away
        objects.append({
            "shape": shape, "label": label, "half": half, "flip": math.cos(heading) < 0,
            "angle": rng.uniform(-0.3, 0.3) if spec.headings == "any" else 0.0,
            "level": rng.uniform(0.02, 0.1) if rng.random() < 0.5 else rng.uniform(0.7, 1.0),
            "stripes": rng.uniform([0.1, 0.5, 0.0, 0.0], [0.35, 2.0, math.pi, 2 * math.pi]),
            "cx": x + distance * math.cos(heading), "cy": y + distance * math.sin(heading)})
    return objects


def render(objects: list[dict], scene: Tensor, f0: int, f1: int) -> tuple[Tensor, list[tuple]]:
    """Intensity ``[f1 - f0, H, W]`` of frames ``f0 .. f1 - 1`` (objects painted over ``scene`` in order) and
    ``(frame, object, x0, y0, x1, y1)`` of every object's coverage >= 0.5 inside the sensor in each frame."""
    canvas = scene.expand(f1 - f0, HEIGHT, WIDTH).clone()
    flat, boxes = canvas.view(-1), []
    for k, obj in enumerate(objects):
        aspect, sdf = SHAPES[obj["shape"]]
        half, cos, sin = obj["half"], math.cos(obj["angle"]), math.sin(obj["angle"])
        rx, ry = (math.ceil(half * (a * abs(cos) + b * abs(sin))) + 2 for a, b in ((aspect, 1), (1, aspect)))
        cx, cy = torch.from_numpy(obj["cx"][f0:f1]).float(), torch.from_numpy(obj["cy"][f0:f1]).float()
        ox, oy = cx.floor().long() - rx, cy.floor().long() - ry
        seen = ((ox < WIDTH) & (ox + 2 * rx + 1 > 0) & (oy < HEIGHT) & (oy + 2 * ry + 1 > 0)).nonzero().squeeze(1)
        if len(seen) == 0:
            continue
        xs = ox[seen, None] + torch.arange(2 * rx + 1)  # [n, cw]
        ys = oy[seen, None] + torch.arange(2 * ry + 1)  # [n, ch]
        dx, dy = (xs - cx[seen, None]).unsqueeze(1), (ys - cy[seen, None]).unsqueeze(2)
        u, v = (cos * dx + sin * dy) / half, (cos * dy - sin * dx) / half
        u = -u if obj["flip"] else u
        cover = (0.5 - sdf(u, v) * half).clamp(0.0, 1.0)  # [n, ch, cw], a one-pixel soft edge
        amp, freq, orient, phase = obj["stripes"]
        texture = obj["level"] * (1 + amp * torch.sin(freq * math.pi * (u * math.cos(orient) + v * math.sin(orient))
                                                      + phase))
        inside = ((xs >= 0) & (xs < WIDTH)).unsqueeze(1) & ((ys >= 0) & (ys < HEIGHT)).unsqueeze(2)
        index = ((seen[:, None, None] * HEIGHT + ys.unsqueeze(2)) * WIDTH + xs.unsqueeze(1))[inside]
        alpha = cover[inside]
        flat[index] = flat[index] * (1 - alpha) + texture[inside] * alpha
        on = (cover >= 0.5) & inside
        cols, rows = on.any(1), on.any(2)  # [n, cw], [n, ch]
        far = 1 << 20
        extent = torch.stack([torch.where(cols, xs, far).amin(1), torch.where(rows, ys, far).amin(1),
                              torch.where(cols, xs + 1, -far).amax(1), torch.where(rows, ys + 1, -far).amax(1)], 1)
        keep = cols.any(1)
        boxes += [(f0 + f, k, *box) for f, box in zip(seen[keep].tolist(), extent[keep].tolist())]
    return canvas, boxes


def record(spec: EventSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One recording: events sorted by time (``EVENT_DTYPE``) and its ``_bbox.npy`` rows (``BBOX_DTYPE``)."""
    frames = frame_count(spec)
    scene = background(rng)
    objects = draw_objects(spec, rng)
    noise = SensorNoise()
    sensor, parts, rows = None, [], []
    for f0 in range(0, frames, CHUNK):
        intensity, boxes = render(objects, scene, f0, min(f0 + CHUNK, frames))
        levels = intensity.log()
        if sensor is None:
            sensor, levels = EventSensor(levels[0], FRAME_US, rng, noise), levels[1:]
        parts.append(sensor(levels))
        every = LABEL_US // FRAME_US
        rows += [(f * FRAME_US, x0, y0, x1 - x0, y1 - y0, objects[k]["label"], 1.0, k)
                 for f, k, x0, y0, x1, y1 in boxes if f % every == 0 and f > 0 and objects[k]["label"] >= 0]
    parts.append(noise_events(rng, spec.duration_us, WIDTH, HEIGHT, noise))
    events = np.concatenate(parts)
    return events[np.argsort(events["t"], kind="stable")], np.array(rows, dtype=BBOX_DTYPE)


def write_set(name: str, root: Path) -> Path:
    """Write set ``name`` in the GEN1 layout under ``root/name`` (once: an existing copy is kept) and return
    that folder: ``{train,val,test}/rec<index>_td.dat`` with ``rec<index>_bbox.npy``."""
    spec, folder = SETS[name], root / name
    if folder.is_dir():
        return folder
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for code, (split, count) in enumerate(zip(SPLITS, spec.recordings)):
        (partial / split).mkdir(parents=True)
        for index in range(count):
            events, boxes = record(spec, np.random.default_rng([sorted(SETS).index(name), code, index]))
            write_dat(partial / split / f"rec{index:04d}_td.dat", events, WIDTH, HEIGHT)
            np.save(partial / split / f"rec{index:04d}_bbox.npy", boxes)
    partial.rename(folder)  # complete: its presence marks it
    return folder


def summary(folder: Path) -> dict[str, dict[str, float]]:
    """Per split: recordings, events, labelled samples and boxes left by GEN1's default filter."""
    out = {}
    for split in SPLITS:
        dats = sorted((folder / split).glob("*_td.dat"))
        kept = [filter_boxes(load_boxes(d.with_name(d.name.replace("_td.dat", "_bbox.npy")))) for d in dats]
        out[split] = {"recordings": len(dats), "events": sum(len(open_records(d)[1]) for d in dats),
                      "samples": sum(len(np.unique(k[:, 0])) for k in kept), "boxes": sum(len(k) for k in kept)}
    return out


def preview(folder: Path, out: Path, count: int = 6) -> None:
    """PNGs of ``count`` validation samples as ``GEN1DataModule`` serves them (at sensor size): the last
    50 ms frame of each, its boxes drawn."""
    from datamodules.events.gen1 import GEN1DataModule
    from spikeloc.visualize import draw_detections, save_png

    data = GEN1DataModule(str(folder), num_steps=4, window_us=50_000, image_size=WIDTH, clip_count=None)
    dataset, names = data.make_dataset("val", None), data.class_names
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    for index in np.linspace(0, len(dataset) - 1, count).astype(int).tolist():
        item = dataset[index]
        picture = draw_detections(item["image"][-1], empty, names, ground_truth=item["target"], min_side=480)
        save_png(picture, out / f"{folder.name}_{index:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=sorted(SETS), choices=sorted(SETS))
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "runs/learning_sets")
    parser.add_argument("--preview", type=Path, default=None, help="also draw a few validation samples here")
    args = parser.parse_args()
    for name in args.sets:
        start = time.perf_counter()
        folder = write_set(name, args.root)
        print(f"{name}: {folder} ({time.perf_counter() - start:.0f} s) {summary(folder)}", flush=True)
        if args.preview:
            preview(folder, args.preview)


if __name__ == "__main__":
    main()
