"""The learning suite's data: small procedural detection sets unlike the quick starts, written in
the COCO layout and read back through ``datamodules.detection.coco.COCODetectionDataModule``, the path a user
takes with their own data (``benchmarks/learning.py``, docs/learning.md).

Every set is a few hundred 128x128 training images of objects drawn at a LOW resolution and then
upscaled (blurry: a handful of real pixels across each object), in fine-grained classes, among clutter:

- ``blurry_digits``: grey digits with random stroke, slant, rotation and aspect, rendered sharp,
  averaged down to about 7-9 px of height ("a scan") and upscaled to 24-40 px; textured grey
  background with stroke clutter; 600 training images.
- ``blurry_letters``: coloured capitals A-J (E/F, O/Q/C/G ... differ in a few pixels) at about 9 px,
  upscaled to 20-36 px, on coloured textures with blob clutter; up to 5 per image; 400 training images.
- ``pip_tiles``: dice-like tiles showing 1-6 pips, drawn at 12 px and upscaled to 22-44 px, among
  blank tiles and discs (distractors that carry no class); 600 training images.

Each image is a function of ``(set, split, index)`` only, so the sets are the same on every machine.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
from PIL import ImageFont

SIZE = 128


@dataclass(frozen=True)
class SetSpec:
    """One suite set: class names, object drawer, sizes and counts."""

    classes: tuple[str, ...]
    draw: Callable[[np.random.Generator, int], np.ndarray]  # (rng, label) -> float alpha [h, w] in [0, 1], low-res
    height: tuple[float, float]  # object height range after upscaling, pixels
    max_objects: int
    num_train: int
    num_val: int
    colour: bool


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_alpha(rng: np.random.Generator, text: str, low_height: float) -> np.ndarray:
    """``text`` drawn sharp at 4x, distorted (stroke, aspect, shear, rotation), cropped, then averaged
    down so its ink is about ``low_height`` pixels tall: float alpha in [0, 1]."""
    size = 48
    canvas = PIL.Image.new("L", (2 * size, 2 * size), 0)
    stroke = int(rng.integers(0, 4))
    PIL.ImageDraw.Draw(canvas).text((size // 2, size // 4), text, fill=255, font=_font(size),
                                    stroke_width=stroke, stroke_fill=255)
    shear = rng.uniform(-0.3, 0.3)
    canvas = canvas.transform(canvas.size, PIL.Image.AFFINE, (1, shear, -shear * size, 0, 1, 0), PIL.Image.BILINEAR)
    canvas = canvas.resize((max(1, int(canvas.width * rng.uniform(0.75, 1.3))), canvas.height), PIL.Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=PIL.Image.BILINEAR, expand=True)
    ink = np.asarray(canvas) >= 128
    ys, xs = np.nonzero(ink)
    crop = canvas.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    scale = low_height / crop.height
    low = crop.resize((max(2, round(crop.width * scale)), max(2, round(crop.height * scale))), PIL.Image.BOX)
    return np.asarray(low, np.float32) / 255.0


def _digit(rng: np.random.Generator, label: int) -> np.ndarray:
    return _text_alpha(rng, str(label), rng.uniform(7.0, 9.0))


LETTERS = tuple("ABCDEFGHIJ")


def _letter(rng: np.random.Generator, label: int) -> np.ndarray:
    return _text_alpha(rng, LETTERS[label], rng.uniform(8.0, 10.0))


PIPS = {1: [(1, 1)], 2: [(0, 0), (2, 2)], 3: [(0, 0), (1, 1), (2, 2)], 4: [(0, 0), (0, 2), (2, 0), (2, 2)],
        5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)], 6: [(0, 0), (1, 0), (2, 0), (0, 2), (1, 2), (2, 2)]}


def _tile(rng: np.random.Generator, label: int) -> np.ndarray:
    """A tile (alpha 0.55) showing ``label + 1`` pips (alpha 1) at 12 px, turned by a multiple of 90
    degrees; ``label = -1`` draws a blank tile, ``-2`` a disc (distractors)."""
    side = 12 * 4
    canvas = PIL.Image.new("L", (side, side), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    if label == -2:
        draw.ellipse([2, 2, side - 3, side - 3], fill=140)
    else:
        draw.rounded_rectangle([1, 1, side - 2, side - 2], radius=8, fill=140)
        for row, col in PIPS.get(label + 1, []):
            cx, cy = 10 + col * 14, 10 + row * 14
            draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=255)
    canvas = canvas.rotate(90 * int(rng.integers(4)))
    low = canvas.resize((12, 12), PIL.Image.BOX)
    return np.asarray(low, np.float32) / 255.0


SETS = {
    "blurry_digits": SetSpec(tuple(str(d) for d in range(10)), _digit, (24.0, 40.0), 3, 600, 300, colour=False),
    "blurry_letters": SetSpec(LETTERS, _letter, (20.0, 36.0), 5, 400, 300, colour=True),
    "pip_tiles": SetSpec(tuple(f"pips_{k}" for k in range(1, 7)), _tile, (22.0, 44.0), 4, 600, 300, colour=True),
}


def _background(rng: np.random.Generator, colour: bool) -> np.ndarray:
    """Float ``[S, S, 3]``: a gradient, smooth random texture per channel and a ripple."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    channels = 3 if colour else 1
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy - 0.5
    image = np.empty((SIZE, SIZE, channels), np.float32)
    for c in range(channels):
        cells = int(rng.integers(3, 10))
        coarse = PIL.Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32), mode="F")
        image[..., c] = (rng.uniform(50, 200) + rng.uniform(-50, 50) * ramp
                         + rng.uniform(5, 30) * np.asarray(coarse.resize((SIZE, SIZE), PIL.Image.BICUBIC)))
    freq, phase = rng.uniform(2.0, 8.0, size=2), rng.uniform(0, 2 * np.pi)
    image += rng.uniform(0, 12) * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)[..., None]
    return np.repeat(image, 3, axis=2) if channels == 1 else image


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Strokes, arcs, rings and blobs drawn over ``image`` (float ``[S, S, 3]``)."""
    canvas = PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    for _ in range(count):
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x, y = rng.uniform(0, SIZE, size=2)
        r = rng.uniform(SIZE / 40, SIZE / 8)
        kind = int(rng.integers(4))
        if kind == 0:
            dx, dy = rng.normal(size=2) * rng.uniform(SIZE / 10, SIZE / 3)
            draw.line([(x, y), (x + dx, y + dy)], fill=fill, width=int(rng.integers(1, 4)))
        elif kind == 1:
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(60, 200), fill=fill, width=2)
        elif kind == 2:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=fill, width=int(rng.integers(1, 3)))
        else:
            draw.ellipse([x - r / 2, y - r / 3, x + r / 2, y + r / 3], fill=fill)
    return np.asarray(canvas.filter(PIL.ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))), np.float32)


def _upscale(alpha: np.ndarray, height: float) -> np.ndarray:
    """Low-resolution ``alpha`` upscaled bilinearly to ``height`` pixels (its aspect kept)."""
    h, w = alpha.shape
    size = (max(2, round(w * height / h)), max(2, round(height)))
    return np.asarray(PIL.Image.fromarray(alpha, mode="F").resize(size, PIL.Image.BILINEAR)).clip(0, 1)


def _ink(rng: np.random.Generator, below: np.ndarray, colour: bool) -> np.ndarray:
    """An object colour ``[3]`` that contrasts with the mean of the pixels ``below`` it."""
    mean = below.reshape(-1, 3).mean(0)
    if not colour:
        level = float(mean.mean())
        shift = rng.uniform(60, 130) * (1 if level < 128 else -1) * (1 if rng.random() < 0.85 else -1)
        return np.full(3, np.clip(level + shift, 0, 255), np.float32)
    for _ in range(20):
        ink = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(ink - mean).sum() > 150:
            return ink
    return 255 - mean


def _free(box: np.ndarray, placed: list[np.ndarray]) -> bool:
    """Whether ``box`` overlaps no placed box by more than 10 % of the smaller one."""
    for other in placed:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
        if iw > 0 and ih > 0 and iw * ih > 0.1 * smaller:
            return False
    return True


def render(spec: SetSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: uint8 ``[S, S, 3]``, float32 boxes ``[N, 4]`` xyxy (``x2`` = last column + 1), labels ``[N]``."""
    image = _clutter(rng, _background(rng, spec.colour), int(rng.integers(2, 9)))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    count = int(rng.integers(1, spec.max_objects + 1))
    distractors = int(rng.integers(0, 3)) if spec.draw is _tile else 0
    for k in range(count + distractors):
        label = int(rng.integers(len(spec.classes))) if k < count else int(rng.integers(-2, 0))
        alpha = _upscale(spec.draw(rng, label), rng.uniform(*spec.height))
        ys, xs = np.nonzero(alpha > 0.25)
        if len(ys) == 0:
            continue
        alpha = alpha[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        h, w = alpha.shape
        if h >= SIZE or w >= SIZE:
            continue
        for _ in range(10):
            x0, y0 = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if _free(box, boxes):
                region = image[y0:y0 + h, x0:x0 + w]
                ink = _ink(rng, region, spec.colour)
                region += alpha[..., None] * (ink - region)
                if label >= 0:
                    boxes.append(box)
                    labels.append(label)
                break
    image += rng.normal(0.0, rng.uniform(3, 10), size=image.shape).astype(np.float32)
    return (np.clip(np.round(image), 0, 255).astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64))


def write_set(name: str, root: Path) -> Path:
    """Write set ``name`` in the COCO layout under ``root/name`` (once: an existing, complete copy is
    kept) and return that folder: ``annotations/instances_{train,val}.json`` and ``{train,val}/*.png``."""
    spec, folder = SETS[name], root / name
    done = folder / "annotations" / "instances_val.json"
    if done.is_file():
        return folder
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(spec.classes)]
    for code, (split, count) in enumerate((("train", spec.num_train), ("val", spec.num_val))):
        (folder / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([sorted(SETS).index(name), code, index])
            pixels, boxes, labels = render(spec, rng)
            file_name = f"{index:05d}.png"
            PIL.Image.fromarray(pixels).save(folder / split / file_name)
            images.append({"id": index + 1, "file_name": file_name, "width": SIZE, "height": SIZE})
            for box, label in zip(boxes.tolist(), labels.tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
        tmp = folder / "annotations" / f".instances_{split}.json.tmp"
        tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        tmp.replace(folder / "annotations" / f"instances_{split}.json")  # val last: its presence marks completion
    return folder
