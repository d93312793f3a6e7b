"""Checks of detection data at setup: one box rule for every split, unreadable files named or skipped.

The box rule (training and evaluation alike, README "Troubleshooting"): a box with a non-finite
coordinate is dropped; the others are clipped to the image, ``[0, W] x [0, H]``; a box left with
zero or negative width or height (inverted, zero-area, wholly outside the image) is dropped. Each
kind is counted and one warning names the first files. Unreadable images (missing, not an image,
truncated header) fail at setup naming the file, or with ``skip_bad_samples`` are skipped, counted
and logged.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import PIL.Image

log = logging.getLogger(__name__)
FIRST_FILES = 5  # files named in a warning
T = TypeVar("T")


class BadSampleError(ValueError):
    """A sample that cannot be used, naming its file; ``skip_bad_samples: true`` skips such samples."""


def sanitize_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Counter]:
    """The box rule on float ``[N, 4]`` xyxy: returns ``(keep mask [N], counts of what happened)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = np.clip(np.nan_to_num(boxes), 0, [width, height, width, height])
    keep = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    moved = keep & (clipped != boxes).any(axis=1)
    counts = Counter(non_finite=int((~finite).sum()), empty=int((finite & ~keep).sum()), clipped=int(moved.sum()))
    return keep, counts


def clean_box_array(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, Counter]:
    """:func:`sanitize_boxes` applied: ``(clipped kept boxes [M, 4] float32, keep mask [N], counts)``."""
    keep, counts = sanitize_boxes(boxes, height, width)
    kept = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4)[keep], 0, [width, height, width, height])
    return kept.astype(np.float32), keep, counts


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` from the image header, or :class:`BadSampleError` naming the file."""
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise BadSampleError(f"cannot read image '{path}': {err}") from err
    if width < 1 or height < 1:
        raise BadSampleError(f"image '{path}' has size {width}x{height}")
    return height, width


def warn_counts(split: str, what: str, counts: Counter, files: list[str]) -> None:
    """One warning for a split: how many of each kind, and the first files concerned."""
    counts = Counter({k: v for k, v in counts.items() if v})
    if not counts:
        return
    kinds = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in sorted(counts.items()))
    more = len(files) - FIRST_FILES
    shown = ", ".join(files[:FIRST_FILES]) + (f" and {more} more" if more > 0 else "")
    warnings.warn(f"{split} split: {what}: {kinds} (in {shown})", stacklevel=3)


def check_records(records: list[Any], split: str, skip_bad_samples: bool = False,
                  size_of: Callable[[str], tuple[int, int]] = image_size) -> list[Any]:
    """Records (``DetectionRecord``-like: ``path``, ``boxes``, ``labels``, ``difficult``, ``name``) after the
    box rule; records whose image cannot be read raise, or are dropped with ``skip_bad_samples``.

    Records without a ``path`` (generated images) are returned unchanged.
    """
    out, bad, totals, touched = [], [], Counter(), []
    for record in records:
        if record.path is None:
            out.append(record)
            continue
        try:
            height, width = size_of(record.path)
        except BadSampleError as err:
            if not skip_bad_samples:
                raise BadSampleError(f"{split} split: {err} (set data.init_args.skip_bad_samples: true to skip "
                                     "such samples)") from err
            bad.append(record.path)
            continue
        boxes, keep, counts = clean_box_array(record.boxes, height, width)
        if sum(counts.values()):
            totals += counts
            touched.append(record.name or Path(record.path).name)
            record = replace(record, boxes=boxes, labels=record.labels[keep], difficult=record.difficult[keep])
        out.append(record)
    warn_counts(split, "boxes fixed by the box rule (dropped if non-finite or empty, else clipped to the image)",
                totals, touched)
    if bad:
        warn_counts(split, "unreadable samples skipped", Counter(skipped=len(bad)), bad)
        log.warning("%s split: skipped %d unreadable samples", split, len(bad))
    if not out:
        raise BadSampleError(f"{split} split is empty after the checks ({len(records)} listed, {len(bad)} unreadable)")
    return out


def collect(items: Iterable[T], read: Callable[[T], Any], split: str, skip_bad_samples: bool,
            errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> list[Any]:
    """``[read(item) for item in items]``; a failing item raises, or with ``skip_bad_samples`` is skipped
    and counted."""
    out, bad = [], []
    for item in items:
        try:
            out.append(read(item))
        except errors as err:
            if not skip_bad_samples:
                raise
            bad.append(str(err).split(":")[0])
    if bad:
        warn_counts(split, "unreadable annotations skipped", Counter(skipped=len(bad)), bad)
    return out


def readable_images(paths: Iterable[str]) -> list[str]:
    """For prediction: the paths whose image header can be read; each other one is skipped with a warning.

    Raises:
        BadSampleError: none of the images can be read.
    """
    paths, good = list(paths), []
    for path in paths:
        try:
            image_size(path)
            good.append(path)
        except BadSampleError as err:
            warnings.warn(f"{err}; skipped", stacklevel=2)
    if not good:
        raise BadSampleError(f"none of the {len(paths)} images can be read" if paths else "no images given")
    return good
