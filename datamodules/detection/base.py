"""Shared pieces of every detection datamodule: records, samples, collate and the base module.

Batch contract (what ``collate_detection`` returns and every detection loader yields)::

    {"images": float [B, 3, S, S] in [0, 1] (no mean/std normalisation),
     "targets": [ {"boxes": float [N, 4] xyxy, network-input pixels,
                   "labels": long [N] in 0..num_classes-1,
                   "difficult": bool [N],
                   "image_id": int >= 1, unique within the split,
                   "orig_size": (h, w) ints of the source image,
                   "orig_boxes": float [N, 4] xyxy, source-image pixels,
                   "scale": float, "pad": (pad_x, pad_y) floats}, ... B of them ]}

with ``boxes = orig_boxes * scale + (pad_x, pad_y, pad_x, pad_y)`` exactly for evaluation samples.
With ``letterbox=False`` (a plain resize, as the reference evaluates) ``scale`` is ``(s_x, s_y)``
and ``pad`` is zero.
For augmented training samples ``scale``/``pad`` describe only the final letterbox (crops and
flips come before it) and ``orig_boxes`` are the source boxes of the objects that survived.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal

import lightning as L
import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from datamodules.common import SplitLoaders
from datamodules.detection.mosaic import Mosaic
from datamodules.detection.transforms import LetterboxInfo, eval_transform, reference_train_transform, train_transform
from datamodules.detection.validation import BadSampleError, DecodeSkips, UnreadableImage, check_records

Transform = Callable[[Any, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
MAX_SKIPPED_IN_A_ROW = 64  # images that fail to decode in a row before a loader gives up (skip_bad_samples)


@dataclass(frozen=True)
class DetectionRecord:
    """Annotation of one source image (numpy keeps tens of thousands of records light).

    Attributes:
        image_id: unique id >= 1 within the split.
        boxes: float32 ``[N, 4]`` xyxy in source-image pixels.
        labels: int64 ``[N]`` contiguous class indices.
        difficult: bool ``[N]`` (VOC difficult, COCO iscrowd).
        path: image file, or ``None`` for generated images.
        name: human-readable origin, e.g. ``"VOC2007/000005"``.
    """

    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    path: str | None = None
    name: str = ""


def make_record(image_id: int, boxes: Any, labels: Any, difficult: Any, path: str | None = None,
                name: str = "") -> DetectionRecord:
    """Build a record with canonical dtypes; ``boxes`` may be empty (shape ``[0, 4]``)."""
    return DetectionRecord(image_id, np.asarray(boxes, np.float32).reshape(-1, 4),
                           np.asarray(labels, np.int64).reshape(-1),
                           np.asarray(difficult, bool).reshape(-1), path, name)


def make_sample(image: torch.Tensor, record: DetectionRecord, transform: Transform,
                drop_difficult: bool = False) -> dict[str, Any]:
    """Apply ``transform`` to one image and its record.

    Args:
        image: uint8 ``[3, H, W]`` source image.
        record: its annotation.
        transform: a pipeline from :mod:`datamodules.detection.transforms`.
        drop_difficult: remove difficult objects before transforming (training).

    Returns:
        ``{"image": float [3, S, S], "target": dict}`` with the target described in this module.
    """
    keep = ~record.difficult if drop_difficult else np.ones(len(record.labels), bool)
    orig_boxes = torch.from_numpy(record.boxes[keep])
    height, width = image.shape[-2:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(orig_boxes.clone(), format="XYXY", canvas_size=(height, width)),
        "labels": torch.from_numpy(record.labels[keep]),
        "difficult": torch.from_numpy(record.difficult[keep]),
        "index": torch.arange(len(orig_boxes)),
        "letterbox": LetterboxInfo(),
    }
    out_image, out = transform(tv_tensors.Image(image), target)
    info: LetterboxInfo = out["letterbox"]
    return {"image": out_image.as_subclass(torch.Tensor), "target": {
        "boxes": out["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
        "labels": out["labels"].long(),
        "difficult": out["difficult"].bool(),
        "image_id": int(record.image_id),
        "orig_size": (int(height), int(width)),
        "orig_boxes": orig_boxes[out["index"]].reshape(-1, 4),
        "scale": info.scale if isinstance(info.scale, tuple) else float(info.scale),
        "pad": (float(info.pad[0]), float(info.pad[1])),
    }}


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images to ``[B, 3, S, S]``; keep targets as a list of B dicts (N varies per image). Images
    skipped at decode time (:class:`RecordDataset`) are listed under ``"skipped"`` (the loader takes them out)."""
    batch = {"images": torch.stack([s["image"] for s in samples]), "targets": [s["target"] for s in samples]}
    skipped = [path for s in samples for path in s.get("skipped", ())]
    return {**batch, "skipped": skipped} if skipped else batch


def read_rgb(path: str) -> torch.Tensor:
    """Decode an image file to uint8 ``[3, H, W]`` RGB; :class:`UnreadableImage` names a file that fails."""
    try:
        with PIL.Image.open(path) as img:
            return F.pil_to_tensor(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise UnreadableImage(f"cannot read image '{path}': {err}", str(path)) from err


class RecordDataset(Dataset):
    """Detection dataset over image files described by :class:`DetectionRecord` s.

    With ``skip_bad_samples`` an image that fails to decode is skipped where it is decoded: the item is
    the next decodable one, with the skipped paths under ``"skipped"`` (counted by ``skips``, see
    :class:`~datamodules.detection.validation.DecodeSkips`); without, the error names the file.
    """

    def __init__(self, records: list[DetectionRecord], transform: Transform, drop_difficult: bool = False,
                 class_names: list[str] | None = None, mosaic: Mosaic | None = None) -> None:
        self.records = records
        self.transform = transform
        self.drop_difficult = drop_difficult
        self.class_names = list(class_names or [])
        self.mosaic = mosaic
        self.skip_bad_samples, self.skips = False, DecodeSkips("")  # set for its split by the datamodule

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[torch.Tensor, DetectionRecord]:
        """The source image uint8 ``[3, H, W]`` of item ``index`` and its record."""
        record = self.records[index]
        return read_rgb(record.path), record

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        for at in range(index, index + min(len(self), MAX_SKIPPED_IN_A_ROW)):
            try:
                sample = self.sample(at % len(self))
            except UnreadableImage as err:
                if not self.skip_bad_samples:
                    raise UnreadableImage(f"{err} (data.init_args.skip_bad_samples: true skips such samples)",
                                          err.path) from err
                skipped.append(err.path)
                continue
            return {**sample, "skipped": skipped} if skipped else sample
        raise BadSampleError(f"{len(skipped)} images in a row do not decode ({skipped[0]}, ..., {skipped[-1]}): "
                             "is the data still where it was at setup?")

    def sample(self, index: int) -> dict[str, Any]:
        """Item ``index`` without skipping: a mosaic with ``mosaic``, else its own image, transformed."""
        image, record = self.mosaic(self.load, index, len(self)) if self.mosaic is not None else self.load(index)
        return make_sample(image, record, self.transform, self.drop_difficult)


class DetectionDataModule(SplitLoaders, L.LightningDataModule, ABC):
    """Base for detection datamodules: transforms, stages and loaders following the batch contract.

    Subclasses implement :attr:`class_names` and :meth:`make_dataset`.

    Args:
        image_size: network input side S (letterboxed square).
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the epoch-reproducible shuffling.
        augment: random augmentation on the training split (otherwise letterbox only).
        train_difficult: keep difficult / crowd objects in training targets.
        letterbox: fit images into the square input keeping their aspect ratio (spikeloc), or
            ``False``: resize them to it without padding (the reference's evaluation).
        augmentation: with ``augment``, spikeloc's pipeline (``"spikeloc"``) or the reference's random
            aspect / scale / HSV jitter and flip (``"reference"``, which places the image itself).
        mosaic: with ``augment``, probability in [0, 1] that a training sample is a mosaic of its
            image and three others of the split (:mod:`datamodules.detection.mosaic`, the reference's optional
            mosaic), built first and then put through the ``augmentation`` pipeline as one source
            image; its ``orig_size`` is ``(S, S)`` and its ``orig_boxes`` are the mosaic's boxes.
            0 (default): off. Used by :class:`RecordDataset` (the VOC and COCO datamodules).
        skip_bad_samples: skip (count and log) unreadable images and annotations instead of failing
            at setup, and images that fail to decode later where they are decoded (:class:`RecordDataset`);
            see :mod:`datamodules.detection.validation` for the checks and the box rule applied to every split.

    Attributes:
        in_channels: image channels (3, RGB), for models built from the datamodule.
    """

    collate_fn = staticmethod(collate_detection)  # variable-size targets

    in_channels: int = 3

    def __init__(self, image_size: int = 416, batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                 augment: bool = True, train_difficult: bool = False, letterbox: bool = True,
                 augmentation: Literal["spikeloc", "reference"] = "spikeloc", skip_bad_samples: bool = False,
                 mosaic: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.skip_bad_samples = skip_bad_samples
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment
        self.train_difficult = train_difficult
        self.letterbox = letterbox
        if augmentation not in ("spikeloc", "reference"):
            raise ValueError(f"augmentation must be 'spikeloc' or 'reference', got {augmentation!r}")
        self.augmentation = augmentation
        self.mosaic = Mosaic(mosaic, image_size)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def record_resolved(self, **values: Any) -> None:
        """Record resolved arguments (``class_names=None`` -> the names used) as the hyperparameters, initial
        ones included: the logger and the checkpoint show what the datamodule uses, which is also what the
        model linked from it records (Lightning refuses to log two different values of one key)."""
        self.save_hyperparameters({**self.hparams, **values})

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of the contiguous labels ``0..num_classes-1``."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def make_dataset(self, split: str, transform: Transform) -> Dataset:
        """Dataset of ``split`` in ``("train", "val", "test")`` whose items come from :func:`make_sample`."""

    def train_transform(self) -> Transform:
        if self.augment and self.augmentation == "reference":
            return reference_train_transform(self.image_size)
        if self.augment:
            return train_transform(self.image_size, letterbox=self.letterbox)
        return eval_transform(self.image_size, self.letterbox)

    def eval_transform(self) -> Transform:
        return eval_transform(self.image_size, self.letterbox)

    def mosaic_for(self, split: str) -> Mosaic | None:
        """The :class:`~datamodules.detection.mosaic.Mosaic` of ``split``'s :class:`RecordDataset`: training with
        ``augment`` and ``mosaic > 0`` only."""
        return self.mosaic if split == "train" and self.augment and self.mosaic.p > 0 else None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a Lightning stage needs (``fit``, ``validate``, ``test``, ``predict``)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._checked("train", self.train_transform())
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._checked("val", self.eval_transform())
        if stage in (None, "test", "predict") and self.test_set is None:
            if not self.test_is_val():
                self.test_set = self._checked("test", self.eval_transform())
            else:
                self.test_set = self.val_set if self.val_set is not None else self._checked(
                    "val", self.eval_transform())

    def _checked(self, split: str, transform: Transform) -> Dataset:
        """:meth:`make_dataset` with every record put through the checks of :mod:`datamodules.detection.validation`."""
        dataset = self.make_dataset(split, transform)
        if isinstance(getattr(dataset, "records", None), list):
            dataset.records = check_records(dataset.records, split, self.skip_bad_samples)
        if isinstance(dataset, RecordDataset):
            dataset.skip_bad_samples, dataset.skips = self.skip_bad_samples, DecodeSkips(split)
        return dataset

    def test_is_val(self) -> bool:
        """Whether the test split is the validation split (then one dataset object serves both)."""
        return False

    def split_dataset(self, split: str) -> Dataset | None:
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]


class FrameDetectionDataModule(DetectionDataModule):
    """Base for detection datamodules whose samples are already network-sized frame sequences
    ``[T, C, S, S]`` (event cameras): no image transforms."""

    def train_transform(self) -> None:
        return None

    def eval_transform(self) -> None:
        return None
