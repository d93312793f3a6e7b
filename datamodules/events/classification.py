"""Event-camera classification on tonic: DVS-Gesture, N-MNIST, CIFAR10-DVS, N-Caltech101.

Recordings are read by tonic's own dataset classes from ``<root>/<ClassName>/...`` (the layout
tonic extracts its archives to); nothing is downloaded: the root is checked first and a missing
folder fails at once naming the expected files, and the archives tonic's ``_check_exists`` looks
for are not needed. Events pass through tonic's ``Denoise`` and ``Downsample`` (optional),
tonic's ``DropEvent`` (optional, training only), then become exactly ``num_steps`` frames with
:class:`~datamodules.events.frames.FixedFrames` (tonic ``ToFrame`` by time window, event count or
number of bins). Binned frames are cached with ``tonic.DiskCachedDataset`` under ``cache_dir``
(one folder per split and framing), so later epochs do not re-bin; random crops (and optional
horizontal flips) act on the cached frames.

Batches: ``(x [B, T, 2, H, W] float32 event counts (clipped at clip_count), y [B] long)``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import tonic
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from datamodules.common import SplitLoaders
from datamodules.events.frames import FixedFrames, Sensor
from datamodules.classification.vision import split_train_val


CACHE_VERSION = 2  # of what the disk cache holds (2: an empty recording as T zero frames)


@dataclass(frozen=True)
class EventSpec:
    """One tonic dataset: class, sensor (W, H, P), split folders, file type, layout for errors."""

    cls: type
    sensor: Sensor
    folders: dict[str, str]  # split ('train', 'test', or 'all' when unsplit) -> folder under <root>/<Class>
    suffix: str
    layout: str


SPECS: dict[str, EventSpec] = {
    "dvs_gesture": EventSpec(
        tonic.datasets.DVSGesture, (128, 128, 2), {"train": "ibmGestureTrain", "test": "ibmGestureTest"}, ".npy",
        "  <root>/DVSGesture/ibmGestureTrain/user01_fluorescent/{0..10}.npy, ... (and ibmGestureTest/)\n"
        "  (the extracted ibmGestureTrain.tar.gz / ibmGestureTest.tar.gz; file name = class index)"),
    "nmnist": EventSpec(
        tonic.datasets.NMNIST, (34, 34, 2), {"train": "Train", "test": "Test"}, ".bin",
        "  <root>/NMNIST/Train/{0..9}/*.bin and <root>/NMNIST/Test/{0..9}/*.bin\n"
        "  (the extracted train.zip / test.zip)"),
    "cifar10_dvs": EventSpec(
        tonic.datasets.CIFAR10DVS, (128, 128, 2), {"all": ""}, ".aedat4",
        "  <root>/CIFAR10DVS/{airplane,automobile,...,truck}/*.aedat4\n"
        "  (the per-class zips extracted; reading .aedat4 needs the `aedat` package)"),
    "ncaltech101": EventSpec(
        tonic.datasets.NCALTECH101, (240, 180, 2), {"all": "Caltech101"}, ".bin",
        "  <root>/NCALTECH101/Caltech101/<class>/image_0001.bin, ... (the extracted Caltech101.zip)"),
}


def check_root(name: str, root: str | Path, folder: str) -> Path:
    """``<root>/<Class>/<folder>`` if it holds at least one recording, else FileNotFoundError."""
    spec = SPECS[name]
    where = Path(root).expanduser() / spec.cls.__name__ / folder
    if not where.is_dir() or next(where.rglob(f"*{spec.suffix}"), None) is None:
        what = "does not exist" if not where.is_dir() else f"holds no {spec.suffix} recordings"
        raise FileNotFoundError(f"{name}: '{where}' {what}.\nExpected layout:\n{spec.layout}\n"
                                "Nothing is downloaded: place the files there or set `data.root`.")
    return where


def local_dataset(name: str, root: str | Path, split: str, transform: Callable | None = None,
                  target_transform: Callable | None = None) -> Any:
    """tonic's dataset ``name`` over the local files only (its download is disabled)."""
    spec = SPECS[name]
    check_root(name, root, spec.folders[split])

    def refuse(self: Any) -> None:
        raise FileNotFoundError(f"{name}: tonic wanted to download into {self.location_on_system}; nothing is "
                                f"downloaded here. Expected layout:\n{spec.layout}")

    # Same class name: tonic derives its folder <root>/<ClassName> from it.
    local = type(spec.cls.__name__, (spec.cls,), {"_check_exists": lambda self: True, "download": refuse})
    kwargs = {"train": split == "train"} if "all" not in spec.folders else {}
    return local(str(Path(root).expanduser()), transform=transform, target_transform=target_transform, **kwargs)


@dataclass(frozen=True)
class EventsToFrames:
    """tonic's event transforms, then always :class:`FixedFrames`: a recording left with no event (empty,
    or every event denoised away) becomes T zero frames. tonic's ``Compose`` stops at an empty array
    and would hand it on unbinned (and the disk cache would keep it)."""

    steps: tuple[Callable, ...]
    framing: FixedFrames

    def __call__(self, events: np.ndarray) -> np.ndarray:
        for step in self.steps:
            if len(events) == 0:
                break
            events = step(events)
        return self.framing(events)


def frame_sensor(sensor: Sensor, downsample: float) -> Sensor:
    """Sensor size after tonic's ``Downsample(spatial_factor=downsample)`` (coordinates floored)."""
    width, height, polarities = sensor
    return int((width - 1) * downsample) + 1, int((height - 1) * downsample) + 1, polarities


@dataclass(frozen=True)
class ClassIndex:
    """tonic target -> class index: N-Caltech101's folder names through ``names``, others as they are."""

    names: tuple[str, ...]

    def __call__(self, target: Any) -> int:
        return self.names.index(target) if isinstance(target, str) else int(target)


class FrameDataset(Dataset):
    """``(frames [T, P, H, W] float32, label long)`` over a (cached) dataset of int16 frames."""

    def __init__(self, frames: Any, clip_count: float | None,
                 augment: Callable[[Tensor], Tensor] | None = None) -> None:
        self.frames, self.clip_count, self.augment = frames, clip_count, augment

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        frames, target = self.frames[index]
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        if self.clip_count is not None:
            x = x.clamp_(max=self.clip_count)
        if self.augment is not None:
            x = self.augment(x)
        return x, torch.tensor(int(target), dtype=torch.long)


def _class_names(name: str, root: str | Path) -> list[str]:
    spec = SPECS[name]
    if name == "ncaltech101":  # tonic labels N-Caltech101 by folder name
        where = check_root(name, root, spec.folders["all"])
        return sorted(p.name for p in where.iterdir() if p.is_dir())
    classes = spec.cls.classes
    return list(classes) if isinstance(classes, list) else sorted(classes, key=classes.get)


class EventClassificationDataModule(SplitLoaders, LightningDataModule):
    """Event classification from a tonic dataset under ``root`` (see the module docstring).

    Args:
        name: ``dvs_gesture``, ``nmnist``, ``cifar10_dvs`` or ``ncaltech101``.
        root: folder holding ``<ClassName>/`` as tonic extracts it.
        num_steps: T, frames per sample (always exactly T).
        frame_mode / frame_value: ``time_window`` (us), ``event_count`` or ``n_time_bins`` (= T).
        denoise_us: tonic ``Denoise(filter_time)`` (None: off).
        downsample: tonic ``Downsample(spatial_factor)`` (1: off).
        drop_event: tonic ``DropEvent(p)`` on training events (0: off; then training frames are not cached).
        augment: random crops (padding ``crop_padding``) on training frames; ``hflip`` adds flips
            (off by default: flips swap DVS-Gesture's left/right classes).
        clip_count: clip event counts per pixel (None: raw counts).
        val_fraction: share of the training recordings held out for validation (0: validate on test).
        test_fraction: share held out for testing when the dataset has no official split.
        cache_dir: where binned frames are cached (None: no cache).
    """

    def __init__(self, name: Literal["dvs_gesture", "nmnist", "cifar10_dvs", "ncaltech101"], root: str,
                 num_steps: int = 20, frame_mode: Literal["time_window", "event_count", "n_time_bins"] = "n_time_bins",
                 frame_value: float | None = None, denoise_us: float | None = None, downsample: float = 1.0,
                 drop_event: float = 0.0, augment: bool = False, crop_padding: int = 4, hflip: bool = False,
                 clip_count: float | None = None, val_fraction: float = 0.0, test_fraction: float = 0.2,
                 cache_dir: str | None = None, batch_size: int = 16, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"EventClassificationDataModule: name must be one of {list(SPECS)}, got {name!r}")
        if not 0.0 <= val_fraction < 1.0 or not 0.0 < test_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1) and test_fraction in (0, 1), "
                             f"got {val_fraction}, {test_fraction}")
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.name, self.root, self.spec = name, root, SPECS[name]
        value = frame_value if frame_value is not None else num_steps if frame_mode == "n_time_bins" else None
        if value is None:
            raise ValueError(f"frame_value is required with frame_mode={frame_mode!r}")
        self.sensor = frame_sensor(self.spec.sensor, downsample)
        self.framing = FixedFrames(self.sensor, num_steps, **{frame_mode: value})
        self.class_names: list[str] = _class_names(name, root)
        for folder in self.spec.folders.values():
            check_root(name, root, folder)
        self.num_classes, self.in_channels, self.num_steps = len(self.class_names), self.sensor[2], num_steps
        self.image_size = (self.sensor[1], self.sensor[0])  # (H, W)
        self.datasets: dict[str, Dataset] = {}

    def _events_transform(self, train: bool) -> Callable:
        hp = self.hparams
        steps: list[Callable] = []
        if hp.denoise_us:
            steps.append(tonic.transforms.Denoise(filter_time=hp.denoise_us))
        if hp.downsample != 1.0:
            steps.append(tonic.transforms.Downsample(spatial_factor=hp.downsample))
        if train and hp.drop_event > 0:
            steps.append(tonic.transforms.DropEvent(p=hp.drop_event))
        return EventsToFrames(tuple(steps), self.framing)

    def _cache_key(self) -> str:
        keys = ("root", "num_steps", "frame_mode", "frame_value", "denoise_us", "downsample")
        # the version: caches of earlier code may hold the unbinned events of empty recordings
        key = {"cache_version": CACHE_VERSION, **{k: self.hparams[k] for k in keys}}
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]

    def _frames(self, split: str, train: bool) -> Any:
        """Frames of a tonic split (``train``/``test``/``all``), cached when possible."""
        data = local_dataset(self.name, self.root, split, self._events_transform(train),
                             ClassIndex(tuple(self.class_names)))
        if self.hparams.cache_dir is None or (train and self.hparams.drop_event > 0):
            return data
        path = Path(self.hparams.cache_dir) / self.name / self._cache_key() / split
        return tonic.DiskCachedDataset(data, cache_path=str(path))

    def _augment(self) -> Callable[[Tensor], Tensor] | None:
        if not self.hparams.augment:
            return None
        height, width = self.image_size
        crops: list[Any] = [v2.RandomCrop((height, width), padding=self.hparams.crop_padding)]
        return v2.Compose(crops + ([v2.RandomHorizontalFlip()] if self.hparams.hflip else []))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp, official = self.hparams, "train" in self.spec.folders
        full = self._frames("train" if official else "all", train=True)
        clean = full if not (hp.drop_event > 0) else self._frames("train" if official else "all", train=False)
        if official:
            test: Any = self._frames("test", train=False)
            rest = torch.arange(len(full))
        else:
            rest, test_idx = split_train_val(len(full), hp.test_fraction, hp.seed)
            test = Subset(clean, test_idx.tolist())
        if hp.val_fraction > 0:
            train_idx, val_idx = split_train_val(len(rest), hp.val_fraction, hp.seed + 1)
            train, val = Subset(full, rest[train_idx].tolist()), Subset(clean, rest[val_idx].tolist())
        else:
            train, val = Subset(full, rest.tolist()), test
        make = lambda data, augment=None: FrameDataset(data, hp.clip_count, augment)  # noqa: E731
        self.datasets = {"train": make(train, self._augment()), "val": make(val), "test": make(test)}

    def split_dataset(self, split: str) -> Dataset | None:
        return self.datasets.get(split)
