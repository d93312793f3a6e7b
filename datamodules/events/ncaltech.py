"""N-Caltech101 with its bounding boxes: a small real event-camera detection set.

Layout (the published archives extracted; nothing is downloaded)::

    <root>/NCALTECH101/Caltech101/<class>/image_0001.bin
    <root>/NCALTECH101/Caltech101_annotations/<class>/annotation_0001.bin

Recordings are read with tonic's ``read_mnist_file`` (ATIS 5-byte events) in sensor coordinates
(tonic's ``NCALTECH101`` class shifts every recording to start at x = y = 0, which would misplace
the boxes). An annotation file holds int16 values: ``rows, cols`` then the box corners column by
column (x, y pairs; ``rows = 2``), then the object contour the same way; the box is the extent of
its corners. Frames: ``num_steps`` bins over the recording (tonic ``ToFrame`` through
:class:`~datamodules.events.frames.FixedFrames`) on a 240x180 sensor, letterboxed into ``image_size``.
There is no official split: ``test_fraction`` then ``val_fraction`` are drawn from ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tonic.io import read_mnist_file
from torch.utils.data import Dataset

from datamodules.detection.base import FrameDetectionDataModule
from datamodules.events.frames import FixedFrames
from datamodules.events.gen1 import letterbox_frames
from datamodules.classification.vision import split_train_val

SENSOR = (240, 180, 2)
ATIS_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
LAYOUT = ("  <root>/NCALTECH101/Caltech101/<class>/image_0001.bin, ...\n"
          "  <root>/NCALTECH101/Caltech101_annotations/<class>/annotation_0001.bin, ...")


def read_annotation(path: str | Path) -> np.ndarray:
    """N-Caltech101 box file -> float32 ``[4]`` xyxy (extent of the box corners, sensor pixels)."""
    values = np.fromfile(path, dtype="<i2")
    if len(values) < 2 or values[0] != 2 or len(values) < 2 + 2 * values[1] or values[1] < 2:
        raise ValueError(f"{path}: not an N-Caltech101 annotation (expected int16 2, n, then n (x, y) corners)")
    corners = values[2:2 + 2 * values[1]].reshape(-1, 2)
    return np.array([*corners.min(axis=0), *corners.max(axis=0)], np.float32)


def index_recordings(root: str | Path) -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """``[(recording, annotation, class)]`` and the sorted class names; errors name what is missing."""
    base = Path(root).expanduser() / "NCALTECH101"
    events, boxes = base / "Caltech101", base / "Caltech101_annotations"
    if not events.is_dir() or not boxes.is_dir():
        raise FileNotFoundError(f"N-Caltech101: '{events}' and '{boxes}' must exist.\nExpected layout:\n{LAYOUT}\n"
                                "Nothing is downloaded: place the files there or set `data.root`.")
    items = []
    for rec in sorted(events.glob("*/image_*.bin")):
        note = boxes / rec.parent.name / rec.name.replace("image_", "annotation_")
        if not note.is_file():
            raise FileNotFoundError(f"N-Caltech101: '{rec}' has no annotation '{note}'.\nExpected layout:\n{LAYOUT}")
        items.append((rec, note, rec.parent.name))
    if not items:
        raise FileNotFoundError(f"N-Caltech101: no image_*.bin recordings under '{events}'.\n"
                                f"Expected layout:\n{LAYOUT}")
    return items, sorted({name for _, _, name in items})


class NCaltechDetectionDataset(Dataset):
    """Items ``{"image": [T, 2, S, S] float, "target": dict}`` (batch contract of ``datamodules.detection.base``)."""

    def __init__(self, items: list[tuple[Path, Path, str]], classes: list[str], ids: list[int], num_steps: int,
                 image_size: int, clip_count: float | None) -> None:
        self.items, self.classes, self.ids = items, classes, ids
        self.framing, self.image_size, self.clip_count = FixedFrames(SENSOR, num_steps, n_time_bins=num_steps), \
            image_size, clip_count

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        recording, annotation, name = self.items[self.ids[index]]
        events = read_mnist_file(str(recording), dtype=ATIS_DTYPE)
        inside = (events["x"] < SENSOR[0]) & (events["y"] < SENSOR[1])
        frames = torch.from_numpy(self.framing(events[inside])).float()
        if self.clip_count is not None:
            frames = frames.clamp_(max=self.clip_count)
        image, scale = letterbox_frames(frames, self.image_size)
        box = torch.from_numpy(read_annotation(annotation)).view(1, 4)
        return {"image": image, "target": {
            "boxes": box * scale, "labels": torch.tensor([self.classes.index(name)]),
            "difficult": torch.zeros(1, dtype=torch.bool), "image_id": self.ids[index] + 1,
            "orig_size": (SENSOR[1], SENSOR[0]), "orig_boxes": box.clone(), "scale": float(scale), "pad": (0.0, 0.0),
            "name": f"{name}/{recording.stem}"}}


class NCaltechDetectionDataModule(FrameDetectionDataModule):
    """N-Caltech101 detection (one box per recording) read from ``root``; see the module docstring."""

    in_channels = 2

    def __init__(self, root: str, num_steps: int = 5, image_size: int = 256, clip_count: float | None = 4.0,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, batch_size: int = 16, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=False)
        self.items, self._classes = index_recordings(root)
        self.num_steps, self.clip_count = num_steps, clip_count
        rest, test = split_train_val(len(self.items), test_fraction, seed)
        train, val = split_train_val(len(rest), val_fraction, seed + 1)
        self.split_ids = {"train": rest[train].tolist(), "val": rest[val].tolist(), "test": test.tolist()}

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def make_dataset(self, split: str, transform: Any) -> NCaltechDetectionDataset:
        return NCaltechDetectionDataset(self.items, self._classes, self.split_ids[split], self.num_steps,
                                        self.image_size, self.clip_count)
