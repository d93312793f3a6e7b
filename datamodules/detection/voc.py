"""PASCAL VOC detection read from the devkit layout on local disk (nothing is downloaded).

Boxes: VOC XML stores 1-based inclusive pixel indices ``xmin..xmax``; the pixels they cover span
the continuous range ``[xmin - 1, xmax]``, so records hold ``(xmin - 1, ymin - 1, xmax, ymax)``.

Your own data labelled in VOC XML trains as is: give its ``class_names`` and its folder and set
names, e.g. ``train_sets=[["MyData", "train"]]`` reads ``<root>/MyData/ImageSets/Main/train.txt``
(a year such as ``2007`` means the folder ``VOC2007``; ``"."`` means ``<root>`` itself).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.common import require_files
from datamodules.detection.base import DetectionDataModule, DetectionRecord, RecordDataset, Transform, make_record
from datamodules.detection.validation import collect

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
VOC_LAYOUT = """<root>/
  VOC2007/                       (and/or VOC2012/, or your own folder: same layout)
    Annotations/<id>.xml
    JPEGImages/<id>.jpg          (or .jpeg / .png)
    ImageSets/Main/{train,val,trainval,test}.txt   (one <id> per line; any set name)"""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LISTED = 10  # missing files named in an error

VOCSets = Sequence[tuple[str | int, str]]  # (year or folder, image set); YAML may give the year as an int


def set_folder(year: str) -> str:
    """``"2007"`` -> ``"VOC2007"``; any other name is the folder itself (``"."``: the root)."""
    return f"VOC{year}" if year.isdigit() else year


def _text(node: ET.Element, key: str, path: Path) -> str:
    found = node.find(key)
    if found is None or found.text is None:
        raise ValueError(f"{path}: missing <{key}> in <{node.tag}>")
    return found.text.strip()


def parse_voc_xml(path: Path, class_names: Sequence[str] = VOC_CLASSES) -> tuple[list[list[float]], list[int],
                                                                               list[bool]]:
    """Objects of one VOC annotation file: boxes ``[N][4]`` (continuous xyxy), labels (indices into
    ``class_names``), difficult flags."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err})") from err
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in class_names:
            raise ValueError(f"{path}: unknown class name {name!r}; the allowed class_names are {list(class_names)}")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{path}: <object> {name!r} has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(_text(bnd, key, path)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise ValueError(f"{path}: bad <bndbox> for {name!r}: {err}") from err
        flag = obj.find("difficult")
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        labels.append(class_names.index(name))
        difficult.append(flag is not None and (flag.text or "0").strip() not in ("0", ""))
    return boxes, labels, difficult


def _check_set(root: Path, year: str, image_set: str) -> Path:
    """Fail clearly when the set's folder or its set file is absent; return the set file."""
    folder = set_folder(year)
    if not (root / folder).is_dir() and root.is_dir():
        raise FileNotFoundError(
            f"VOC set ({year!r}, {image_set!r}) requested but '{root / folder}' does not exist; "
            f"drop it from train_sets/val_sets or add the folder.\nExpected layout:\n{VOC_LAYOUT}")
    set_file = f"{folder}/ImageSets/Main/{image_set}.txt"
    require_files(root, [set_file, f"{folder}/Annotations", f"{folder}/JPEGImages"], VOC_LAYOUT)
    return root / set_file


def _image_file(root: Path, folder: str, image_id: str) -> str:
    """``<folder>/JPEGImages/<id>`` with the first suffix of ``IMAGE_SUFFIXES`` present (else ``.jpg``)."""
    names = [f"{folder}/JPEGImages/{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    return next((name for name in names if (root / name).is_file()), names[0])


def read_voc_records(root: str | Path, sets: VOCSets, first_id: int = 1, class_names: Sequence[str] = VOC_CLASSES,
                     skip_bad_samples: bool = False, split: str = "") -> list[DetectionRecord]:
    """Records of every image listed in ``sets`` (e.g. ``[("2007", "trainval")]``), ids from ``first_id``,
    labels indexing ``class_names``; with ``skip_bad_samples`` an unreadable annotation is skipped
    (counted, warned) instead of raising.

    Raises:
        FileNotFoundError: root, a set folder, a set file or any listed XML / image is missing.
        ValueError: an XML names a class outside ``class_names`` (the file, the name and the list).
    """
    root = Path(root).expanduser()
    listed: list[tuple[str, str]] = []
    for year, image_set in sets:
        set_file = _check_set(root, str(year), image_set)
        ids = [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]
        listed += [(str(year), image_id) for image_id in ids]
    files = [(f"{set_folder(y)}/Annotations/{i}.xml", _image_file(root, set_folder(y), i)) for y, i in listed]
    missing = [name for pair in files for name in pair if not (root / name).is_file()]
    if missing:
        require_files(root, missing[:MAX_LISTED], VOC_LAYOUT)

    def read(item: tuple[int, tuple[str, str], tuple[str, str]]) -> DetectionRecord:
        offset, (year, image_id), (xml, jpg) = item
        boxes, labels, difficult = parse_voc_xml(root / xml, class_names)
        return make_record(first_id + offset, boxes, labels, difficult, str(root / jpg),
                           name=f"{set_folder(year)}/{image_id}")

    return collect([(k, *pair) for k, pair in enumerate(zip(listed, files))], read, split, skip_bad_samples)


class VOCDetectionDataModule(DetectionDataModule):
    """Detection in the VOC layout: PASCAL VOC 2007/2012 (default) or your own classes and folders.

    Args:
        root: devkit folder (see ``VOC_LAYOUT``).
        train_sets: (year or folder, image set) pairs concatenated for training; default 07+12 trainval.
        val_sets: pairs for validation; default VOC2007 test.
        test_sets: pairs for testing; ``None`` means the validation sets.
        class_names: the label names in label order; default the 20 VOC classes.
        image_size, batch_size, num_workers, seed, augment, letterbox, augmentation, skip_bad_samples, mosaic: see
            :class:`DetectionDataModule`.
        train_difficult: keep ``difficult`` objects in training targets (eval always keeps and flags them).
    """

    def __init__(self, root: str, train_sets: VOCSets = (("2007", "trainval"), ("2012", "trainval")),
                 val_sets: VOCSets = (("2007", "test"),), test_sets: VOCSets | None = None,
                 class_names: list[str] | None = None, image_size: int = 416, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, augment: bool = True, train_difficult: bool = False,
                 letterbox: bool = True, augmentation: Literal["spikeloc", "reference"] = "spikeloc",
                 skip_bad_samples: bool = False, mosaic: float = 0.0) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, train_difficult=train_difficult, letterbox=letterbox,
                         augmentation=augmentation, skip_bad_samples=skip_bad_samples, mosaic=mosaic)
        names = list(VOC_CLASSES if class_names is None else class_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"class_names must be distinct non-empty names, got {class_names!r}")
        self._class_names = names
        self.record_resolved(class_names=names)
        self.root = root
        self.sets = {"train": _normalise(train_sets), "val": _normalise(val_sets),
                     "test": _normalise(val_sets if test_sets is None else test_sets)}

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def make_dataset(self, split: str, transform: Transform) -> Dataset:
        records = read_voc_records(self.root, self.sets[split], class_names=self._class_names,
                                   skip_bad_samples=self.skip_bad_samples, split=split)
        drop = split == "train" and not self.train_difficult
        return RecordDataset(records, transform, drop_difficult=drop, class_names=self._class_names,
                             mosaic=self.mosaic_for(split))

    def test_is_val(self) -> bool:
        return self.sets["test"] == self.sets["val"]


def _normalise(sets: VOCSets) -> list[tuple[str, str]]:
    """``[(year, set), ...]`` as strings (YAML may give years as ints); rejects malformed pairs."""
    out = []
    for pair in sets:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"VOC sets must be (year or folder, image_set) pairs like ('2007', 'trainval') or "
                             f"('MyData', 'train'), got {pair!r}")
        out.append((str(pair[0]), str(pair[1])))
    if not out:
        raise ValueError("VOC sets must not be empty")
    return out
