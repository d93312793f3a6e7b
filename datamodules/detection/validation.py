"""Checks of detection data at setup: one box rule for every split, unreadable files named or skipped.

The box rule (training and evaluation alike, docs/data.md): a box with a non-finite
coordinate is dropped; the others are clipped to the image, ``[0, W] x [0, H]``; a box left with
zero or negative width or height (inverted, zero-area, wholly outside the image) is dropped. Each
kind is counted and one warning names the first files. Unreadable images (missing, not an image,
truncated header, or data that does not decode: :func:`undecodable`) fail at setup naming the file,
or with ``skip_bad_samples`` are skipped, counted and logged. An image that fails to decode later,
in a loader, is skipped there with ``skip_bad_samples`` (:class:`DecodeSkips` counts it).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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


class UnreadableImage(OSError):
    """An image file that cannot be decoded; ``path`` names it (``message`` first: a loader worker re-raises
    it in the main process as ``UnreadableImage(message=...)``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


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


def decode_error(path: str) -> str | None:
    """Why ``path`` does not decode, or None. A JPEG decodes at 1/8 scale (``draft``): every byte of its
    entropy-coded data is still read, so truncated or broken data fails as in a full decode, for less work
    (no full-size inverse DCT or colour conversion)."""
    try:
        with PIL.Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            image.load()
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        return f"cannot decode image '{path}': {err}"
    return None


def _verified_marker(paths: list[str]) -> Path:
    """Where a set of files (names, sizes, modification times) is recorded as decodable."""
    stamp = hashlib.sha1()
    for path in paths:
        info = os.stat(path)
        stamp.update(f"{path}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
    cache = Path(os.environ.get("SPIKELOC_CACHE") or Path.home() / ".cache" / "spikeloc")
    return cache / "decoded" / stamp.hexdigest()


def undecodable(paths: list[str], threads: int | None = None) -> dict[str, str]:
    """``{path: error}`` of the images that do not decode (:func:`decode_error`, in ``threads`` threads:
    the decoder releases the GIL). A set of files found decodable is recorded under ``$SPIKELOC_CACHE``
    (else ``~/.cache/spikeloc``), so the same unchanged files are not decoded again."""
    if not paths:
        return {}
    marker = _verified_marker(paths)
    if marker.exists():
        return {}
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        errors = {path: error for path, error in zip(paths, pool.map(decode_error, paths, chunksize=64)) if error}
    if not errors:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next run the check again
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    return errors


class DecodeSkips:
    """The samples of a split skipped at decode time (``skip_bad_samples``), counted in the main process.

    A dataset that skips an image puts its path under the sample's ``"skipped"``, the collate function
    gathers them under the batch's, and the loader hands each batch to :meth:`take` (in the main process,
    whatever the workers): the first skip of a file is warned about, and :meth:`end_of_pass` (the end
    of each pass over the split, an epoch) warns how many samples that pass skipped.
    """

    def __init__(self, split: str) -> None:
        self.split, self.count, self.files = split, 0, set()

    def take(self, batch: Any) -> None:
        """Count and take the ``"skipped"`` paths out of a batch (a dict); others are left alone."""
        paths = batch.pop("skipped", ()) if isinstance(batch, dict) else ()
        for path in paths:
            self.count += 1
            if path not in self.files:
                self.files.add(path)
                warnings.warn(f"{self.split} split: cannot decode image '{path}': skipped "
                              "(data.init_args.skip_bad_samples)", stacklevel=2)

    def end_of_pass(self) -> None:
        if self.count:
            message = f"{self.split} split: {self.count} samples skipped at decode time in this pass " \
                      f"({len(self.files)} unreadable files so far)"
            warnings.warn(message, stacklevel=2)
            log.warning(message)
        self.count = 0


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
                  size_of: Callable[[str], tuple[int, int]] = image_size,
                  decodes: Callable[[list[str]], dict[str, str]] = undecodable) -> list[Any]:
    """Records (``DetectionRecord``-like: ``path``, ``boxes``, ``labels``, ``difficult``, ``name``) after the
    box rule; records whose image cannot be read (``size_of``: its header) or decoded (``decodes``: every
    image of the split, before training starts) raise, or are dropped with ``skip_bad_samples``.

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
    broken = decodes([record.path for record in out if record.path is not None])
    if broken and not skip_bad_samples:
        more = f" and {len(broken) - 1} more: {', '.join(list(broken)[1:FIRST_FILES])}" if len(broken) > 1 else ""
        raise BadSampleError(f"{split} split: {next(iter(broken.values()))}{more} (set "
                             "data.init_args.skip_bad_samples: true to skip such samples)")
    out, bad = [record for record in out if record.path not in broken], bad + list(broken)
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
    """For prediction: the paths whose image can be read and decoded; each other one is skipped with a
    warning.

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
    broken = undecodable(good)
    for path, error in broken.items():
        warnings.warn(f"{error}; skipped", stacklevel=2)
    good = [path for path in good if path not in broken]
    if not good:
        raise BadSampleError(f"none of the {len(paths)} images can be read" if paths else "no images given")
    return good
