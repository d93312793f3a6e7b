"""Prophesee GEN1 automotive detection (304x240 ATIS; cars and pedestrians) from a local root.

Layout (as published)::

    <root>/train/<name>_td.dat   <root>/train/<name>_bbox.npy   (also val/ and test/)

``_bbox.npy`` is a structured array with fields ``t`` (or ``ts`` in the v1 release, us),
``x, y, w, h`` (top-left corner and size, pixels), ``class_id`` (0 car, 1 pedestrian),
``confidence``, ``track_id``. One sample per labelled timestamp ``t_k`` of a recording: the
events of ``[t_k - num_steps * window_us, t_k)`` become ``num_steps`` frames ``[2, H, W]``
(:func:`~datamodules.events.frames.bin_events`; only that window of the memory-mapped ``.dat`` is
decoded), the boxes of ``t_k`` are the targets.

Standard box filtering (Prophesee's evaluation protocol, also used by RVT for GEN1): boxes are
clipped to the sensor; a box is kept when its diagonal is >= ``min_box_diag`` (30 px) and both
sides are >= ``min_box_side`` (10 px); labels in the first ``skip_us`` (0.5 s) of a recording are
skipped (the sensor has not yet seen enough motion). Frames are letterboxed into
``image_size`` x ``image_size`` (resized by ``image_size / 304``, padded at the bottom/right), and
samples follow the batch contract of :mod:`datamodules.detection.base` with ``images`` ``[B, T, 2, S, S]``.

Training samples can be augmented as event detectors do (all off by default): horizontal flips, zooms and
shifts of the frames with their boxes (:class:`~datamodules.events.frames.EventAugment`), and time-window jitter
(the window ends up to ``time_jitter * window_us`` before the label, whose boxes are kept).

With ``sequential`` the recordings are instead cut into consecutive windows of ``num_steps * window_us``
(their ends on the phase of the recording's first label) and batch ``b + 1`` continues the recordings of
batch ``b`` row by row (:mod:`datamodules.events.streams`; ``reset`` where a recording starts), for a detector
that carries its state across batches (``spikeloc.training.carry.StreamingDetector``), in training and
evaluation alike. A label belongs to the window whose last frame holds it; windows without one are
``labelled: False`` (neither trained on nor scored). Training shuffles the recordings by seed + epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.events.dat import open_records, read_events, read_header
from datamodules.detection.base import FrameDetectionDataModule
from datamodules.events.frames import EventAugment, bin_events
from datamodules.events.streams import stream_loader

GEN1_CLASSES = ["car", "pedestrian"]
# ``_bbox.npy`` as published (v1 files; later Prophesee tools name the time field "t")
BBOX_DTYPE = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                       ("confidence", "<f4"), ("track_id", "<u4")])
GEN1_SENSOR = (304, 240, 2)  # (W, H, P)
LAYOUT = ("  <root>/{train,val,test}/<recording>_td.dat with <recording>_bbox.npy next to each\n"
          "  (the extracted Prophesee GEN1 automotive archives)")


def load_boxes(path: str | Path) -> np.ndarray:
    """A ``_bbox.npy`` as float64 ``[N, 6]`` columns (t, x, y, w, h, class_id), sorted by t."""
    try:
        raw = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npy box file ({err})") from err
    names = raw.dtype.names or ()
    time_key = "t" if "t" in names else "ts"
    missing = [k for k in (time_key, "x", "y", "w", "h", "class_id") if k not in names]
    if missing:
        raise ValueError(f"{path}: box array lacks fields {missing}; has {list(names)} "
                         "(expected t|ts, x, y, w, h, class_id, ...)")
    table = np.stack([raw[k].astype(np.float64) for k in (time_key, "x", "y", "w", "h", "class_id")], axis=1)
    return table[np.argsort(table[:, 0], kind="stable")]


def filter_boxes(boxes: np.ndarray, width: int = 304, height: int = 240, min_box_diag: float = 30.0,
                 min_box_side: float = 10.0, skip_us: float = 500_000.0) -> np.ndarray:
    """Clip to the sensor, then keep boxes with t > skip_us, diagonal >= min and sides >= min.

    Args:
        boxes: ``[N, 6]`` (t, x, y, w, h, class_id) from :func:`load_boxes`.
    Returns:
        ``[M, 6]`` with x, y, w, h of the clipped boxes.
    """
    x0, y0 = np.clip(boxes[:, 1], 0, width), np.clip(boxes[:, 2], 0, height)
    x1, y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, width), np.clip(boxes[:, 2] + boxes[:, 4], 0, height)
    out = np.stack([boxes[:, 0], x0, y0, x1 - x0, y1 - y0, boxes[:, 5]], axis=1)
    w, h = out[:, 3], out[:, 4]
    keep = (out[:, 0] > skip_us) & (w ** 2 + h ** 2 >= min_box_diag ** 2) & (w >= min_box_side) & (h >= min_box_side)
    return out[keep]


@dataclass(frozen=True)
class Sample:
    """One labelled timestamp of one recording; boxes xyxy sensor pixels."""

    dat: str
    t: int
    boxes: np.ndarray
    labels: np.ndarray


def index_split(folder: Path, **filter_kwargs: Any) -> list[Sample]:
    """Samples of every ``*_td.dat`` in ``folder`` (labelled timestamps with at least one box left)."""
    dats = sorted(folder.glob("*_td.dat"))
    if not dats:
        raise FileNotFoundError(f"GEN1: no *_td.dat recordings in '{folder}'.\nExpected layout:\n{LAYOUT}")
    samples = []
    for dat in dats:
        bbox = dat.with_name(dat.name[: -len("_td.dat")] + "_bbox.npy")
        if not bbox.is_file():
            raise FileNotFoundError(f"GEN1: '{dat}' has no box file '{bbox.name}' next to it.\n"
                                    f"Expected layout:\n{LAYOUT}")
        header = read_header(dat)
        if (header.width, header.height) not in ((None, None), GEN1_SENSOR[:2]):
            raise ValueError(f"{dat}: sensor {header.width}x{header.height}, GEN1 is 304x240")
        boxes = filter_boxes(load_boxes(bbox), **filter_kwargs)
        for t in np.unique(boxes[:, 0]):
            rows = boxes[boxes[:, 0] == t]
            xyxy = np.stack([rows[:, 1], rows[:, 2], rows[:, 1] + rows[:, 3], rows[:, 2] + rows[:, 4]], axis=1)
            samples.append(Sample(str(dat), int(t), xyxy.astype(np.float32), rows[:, 5].astype(np.int64)))
    return samples


def letterbox_frames(frames: torch.Tensor, image_size: int) -> tuple[torch.Tensor, float]:
    """``[T, P, H, W]`` -> ``[T, P, S, S]``: resized by ``S / max(H, W)`` (area), zero-padded bottom/right."""
    height, width = frames.shape[-2:]
    scale = image_size / max(height, width)
    if scale != 1.0:
        size = (round(height * scale), round(width * scale))
        frames = F.interpolate(frames, size=size, mode="area" if scale < 1 else "nearest")
    pad = (0, image_size - frames.shape[-1], 0, image_size - frames.shape[-2])
    return F.pad(frames, pad), scale


class GEN1Dataset(Dataset):
    """Items ``{"image": [T, 2, S, S] float, "target": dict}`` (batch contract of ``datamodules.detection.base``);
    ``augment`` and ``time_jitter`` (training) as in the module docstring."""

    def __init__(self, samples: list[Sample], num_steps: int, window_us: int, image_size: int,
                 clip_count: float | None, augment: EventAugment | None = None, time_jitter: float = 0.0) -> None:
        self.samples, self.num_steps, self.window_us = samples, num_steps, window_us
        self.image_size, self.clip_count = image_size, clip_count
        self.augment, self.time_jitter = augment, time_jitter

    def __len__(self) -> int:
        return len(self.samples)

    def frames(self, dat: str, end: int) -> tuple[torch.Tensor, float]:
        """The letterboxed frames ``[T, 2, S, S]`` of the events of ``[end - T * window_us, end)`` and the scale."""
        start = end - self.num_steps * self.window_us
        frames = torch.from_numpy(bin_events(read_events(dat, start, end), GEN1_SENSOR, self.num_steps, start,
                                             end)).float()
        if self.clip_count is not None:
            frames = frames.clamp_(max=self.clip_count)
        return letterbox_frames(frames, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        shift = int(torch.rand(()) * self.time_jitter * self.window_us) if self.time_jitter else 0
        return self.item(s, *self.frames(s.dat, s.t - shift), image_id=index + 1)

    def item(self, s: Sample, image: torch.Tensor, scale: float, image_id: int) -> dict[str, Any]:
        """The sample's item from its frames (augmented with ``augment``: the boxes that stay, their sources)."""
        orig = torch.from_numpy(s.boxes)
        boxes, kept = orig * scale, torch.arange(len(orig))
        if self.augment is not None and self.augment.active:
            image, boxes, kept = self.augment(image, boxes)
        return {"image": image, "target": {
            "boxes": boxes, "labels": torch.from_numpy(s.labels)[kept],
            "difficult": torch.zeros(len(kept), dtype=torch.bool), "image_id": image_id,
            "orig_size": (GEN1_SENSOR[1], GEN1_SENSOR[0]), "orig_boxes": orig[kept], "scale": float(scale),
            "pad": (0.0, 0.0), "name": f"{Path(s.dat).stem}@{s.t}"}}


@dataclass(frozen=True)
class Recording:
    """A recording cut into ``windows`` consecutive windows from ``start`` (us); ``labels``: window -> its label."""

    dat: str
    start: int
    windows: int
    labels: dict[int, Sample]


def index_recordings(folder: Path, span_us: int, frame_us: int, **filter_kwargs: Any) -> list[Recording]:
    """The labelled recordings of ``folder`` as windows of ``span_us`` whose ends fall on the phase of the
    first label and that cover every event and label; a label goes to the window whose last frame
    (``frame_us``) holds it, the latest one when several do."""
    by_dat: dict[str, list[Sample]] = {}
    for sample in index_split(folder, **filter_kwargs):
        by_dat.setdefault(sample.dat, []).append(sample)
    recordings = []
    for dat, samples in sorted(by_dat.items()):
        times = open_records(dat)[1]["t"]
        first = int(times[0]) if len(times) else samples[0].t
        last = max(int(times[-1]) + 1 if len(times) else 0, samples[-1].t)  # what the windows cover ends here
        start = samples[0].t - span_us * max(1, (samples[0].t - first) // span_us)
        windows = -(-(last - start) // span_us)
        labels = {}
        for sample in samples:
            window = -(-(sample.t - start) // span_us) - 1  # the first window ending at or after the label
            if start + (window + 1) * span_us - sample.t < frame_us:
                labels[window] = sample
        recordings.append(Recording(dat, start, windows, labels))
    return recordings


class GEN1StreamDataset(Dataset):
    """Consecutive windows (``sequential``): item ``offsets[r] + w`` is window ``w`` of recording ``r``, the last
    item an idle row's (no event, no label). Items are :class:`GEN1Dataset`'s (named ``<recording>@<window end>``,
    with the boxes of the window's label) plus ``reset`` (window 0, or idle) and ``labelled``; ``lengths`` are
    the recordings' window counts (for ``datamodules.events.streams``)."""

    def __init__(self, recordings: list[Recording], num_steps: int, window_us: int, image_size: int,
                 clip_count: float | None) -> None:
        self.recordings, self.lengths = recordings, [r.windows for r in recordings]
        self.offsets = np.cumsum([0] + self.lengths)
        self.span = num_steps * window_us
        self.windows = GEN1Dataset([], num_steps, window_us, image_size, clip_count)  # frames and items

    def __len__(self) -> int:
        return int(self.offsets[-1]) + 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        if index == len(self) - 1:
            size = self.windows.image_size
            image = torch.zeros(self.windows.num_steps, 2, size, size)
            return {**self.windows.item(Sample("idle", 0, *empty), image, 1.0, index + 1), "reset": True,
                    "labelled": False}
        r = int(np.searchsorted(self.offsets, index, side="right")) - 1
        window, rec = index - int(self.offsets[r]), self.recordings[r]
        end = rec.start + (window + 1) * self.span
        label = rec.labels.get(window)
        boxes = (label.boxes, label.labels) if label is not None else empty
        item = self.windows.item(Sample(rec.dat, end, *boxes), *self.windows.frames(rec.dat, end), index + 1)
        return {**item, "reset": window == 0, "labelled": window in rec.labels}


class GEN1DataModule(FrameDetectionDataModule):
    """GEN1 detection read from ``root`` (nothing is downloaded; see the module docstring).

    Args:
        root: folder holding ``train/``, ``val/``, ``test/``.
        num_steps: T frames per sample; window_us: duration of one frame (us).
        image_size: network input side S; clip_count: clip event counts per pixel (None: raw).
        min_box_diag / min_box_side / skip_us: the standard box filter.
        hflip / zoom / translate: training augmentation, see :class:`~datamodules.events.frames.EventAugment`
            (flip probability, zoom factor range, largest shift as a fraction of the side).
        time_jitter: training windows end up to ``time_jitter * window_us`` before their label (0: off).
        sequential: batches of consecutive windows that continue the recordings row by row (see the module
            docstring; one process: not under DDP; without augmentation).
        batch_size / num_workers / seed: loaders.
    """

    in_channels = 2

    def __init__(self, root: str, num_steps: int = 5, window_us: int = 50_000, image_size: int = 320,
                 clip_count: float | None = 4.0, min_box_diag: float = 30.0, min_box_side: float = 10.0,
                 skip_us: float = 500_000.0, hflip: float = 0.0, zoom: tuple[float, float] | None = None,
                 translate: float = 0.0, time_jitter: float = 0.0, sequential: bool = False, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=False)
        self.root = Path(root).expanduser()
        for split in ("train", "val", "test"):
            if not (self.root / split).is_dir():
                raise FileNotFoundError(f"GEN1: '{self.root / split}' does not exist.\nExpected layout:\n{LAYOUT}\n"
                                        "Nothing is downloaded: place the files there or set `data.root`.")
        self.num_steps, self.window_us, self.clip_count = num_steps, window_us, clip_count
        self.filter_kwargs = dict(min_box_diag=min_box_diag, min_box_side=min_box_side, skip_us=skip_us)
        if not 0 <= time_jitter <= 1:
            raise ValueError(f"GEN1: time_jitter must be in [0, 1] (a fraction of window_us), got {time_jitter}")
        self.event_augment, self.time_jitter = EventAugment(hflip, zoom, translate), time_jitter
        if sequential and (self.event_augment.active or time_jitter):
            raise ValueError("GEN1: sequential: true trains on consecutive windows of whole recordings; hflip, zoom, "
                             "translate and time_jitter augment independent windows only: leave them at 0 / null")
        self.sequential = sequential

    @property
    def class_names(self) -> list[str]:
        return list(GEN1_CLASSES)

    def make_dataset(self, split: str, transform: Any) -> GEN1Dataset | GEN1StreamDataset:
        if self.sequential:
            recordings = index_recordings(self.root / split, self.num_steps * self.window_us, self.window_us,
                                          **self.filter_kwargs)
            return GEN1StreamDataset(recordings, self.num_steps, self.window_us, self.image_size, self.clip_count)
        samples = index_split(self.root / split, **self.filter_kwargs)
        train = split == "train"
        return GEN1Dataset(samples, self.num_steps, self.window_us, self.image_size, self.clip_count,
                           self.event_augment if train else None, self.time_jitter if train else 0.0)

    def split_loader(self, split: str) -> Any:
        """Independent windows (the shared loaders), or with ``sequential`` batches that continue the
        recordings row by row (``datamodules.events.streams.stream_loader``; training shuffles by seed + epoch)."""
        if not self.sequential:
            return super().split_loader(split)
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ValueError(f"GEN1: sequential: true runs in one process; this run has {self.trainer.world_size}")
        dataset = self.split_dataset(split)
        if dataset is None:
            raise RuntimeError(f"GEN1DataModule: the {split} split is not set up; call setup() first")
        return stream_loader(dataset, dataset.lengths, self.batch_size, split == "train", self.seed, self.num_workers)


def iter_dat_frames(path: str | Path, frame_us: int = 50_000, image_size: int = 320,
                    clip_count: float | None = 4.0, headerless: bool = False) -> Iterator[torch.Tensor]:
    """Frames ``[2, S, S]`` of a whole ``.dat`` recording, one per ``frame_us``, decoded lazily
    (one frame's events at a time: constant memory however long the recording), letterboxed
    like :class:`GEN1Dataset`'s samples. For streaming inference (``spikeloc.streaming``). The file
    is checked at the call (not at the first frame); ``headerless``: see :func:`~datamodules.events.dat.read_header`."""
    header, records = open_records(path, headerless)
    return _dat_frames(path, header, records, frame_us, image_size, clip_count, headerless)


def _dat_frames(path: str | Path, header: Any, records: np.ndarray, frame_us: int, image_size: int,
                clip_count: float | None, headerless: bool) -> Iterator[torch.Tensor]:
    if len(records) == 0:
        return
    sensor = (header.width or GEN1_SENSOR[0], header.height or GEN1_SENSOR[1], 2)
    start, end = int(records["t"][0]), int(records["t"][-1]) + 1
    for t in range(start, end, frame_us):
        events = read_events(path, t, t + frame_us, headerless)
        frame = torch.from_numpy(bin_events(events, sensor, 1, t, t + frame_us)).float()
        if clip_count is not None:
            frame = frame.clamp_(max=clip_count)
        yield letterbox_frames(frame, image_size)[0][0]
