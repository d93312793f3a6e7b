"""PASCAL VOC detection read from the devkit layout on local disk (nothing is downloaded).

Boxes: VOC XML stores 1-based inclusive pixel indices ``xmin..xmax``; the pixels they cover span
the continuous range ``[xmin - 1, xmax]``, so records hold ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from datamodules.common import require_files
from datamodules.detection import DetectionDataModule, DetectionRecord, RecordDataset, Transform, make_record

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
VOC_LAYOUT = """<root>/
  VOC2007/                       (and/or VOC2012/, same layout)
    Annotations/<id>.xml
    JPEGImages/<id>.jpg
    ImageSets/Main/{train,val,trainval,test}.txt   (one <id> per line)"""
MAX_LISTED = 10  # missing files named in an error

VOCSets = Sequence[tuple[str | int, str]]  # (year, image set); YAML may give the year as an int


def _text(node: ET.Element, key: str, path: Path) -> str:
    found = node.find(key)
    if found is None or found.text is None:
        raise ValueError(f"{path}: missing <{key}> in <{node.tag}>")
    return found.text.strip()


def parse_voc_xml(path: Path) -> tuple[list[list[float]], list[int], list[bool]]:
    """Objects of one VOC annotation file: boxes ``[N][4]`` (continuous xyxy), labels, difficult flags."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err})") from err
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: unknown class name {name!r}; expected one of the 20 VOC classes")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{path}: <object> {name!r} has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(_text(bnd, key, path)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as err:
            raise ValueError(f"{path}: bad <bndbox> for {name!r}: {err}") from err
        flag = obj.find("difficult")
        boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
        labels.append(VOC_CLASSES.index(name))
        difficult.append(flag is not None and (flag.text or "0").strip() not in ("0", ""))
    return boxes, labels, difficult


def _check_set(root: Path, year: str, image_set: str) -> Path:
    """Fail clearly when ``VOC<year>`` or its set file is absent; return the set file."""
    if not (root / f"VOC{year}").is_dir() and root.is_dir():
        raise FileNotFoundError(
            f"VOC set ({year!r}, {image_set!r}) requested but '{root / f'VOC{year}'}' does not exist; "
            f"drop it from train_sets/val_sets or add the folder.\nExpected layout:\n{VOC_LAYOUT}")
    set_file = f"VOC{year}/ImageSets/Main/{image_set}.txt"
    require_files(root, [set_file, f"VOC{year}/Annotations", f"VOC{year}/JPEGImages"], VOC_LAYOUT)
    return root / set_file


def read_voc_records(root: str | Path, sets: VOCSets, first_id: int = 1) -> list[DetectionRecord]:
    """Records of every image listed in ``sets`` (e.g. ``[("2007", "trainval")]``), ids from ``first_id``.

    Raises:
        FileNotFoundError: root, a year folder, a set file or any listed XML / JPEG is missing.
    """
    root = Path(root).expanduser()
    listed: list[tuple[str, str]] = []
    for year, image_set in sets:
        set_file = _check_set(root, str(year), image_set)
        ids = [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]
        listed += [(str(year), image_id) for image_id in ids]
    files = [(f"VOC{y}/Annotations/{i}.xml", f"VOC{y}/JPEGImages/{i}.jpg") for y, i in listed]
    missing = [name for pair in files for name in pair if not (root / name).is_file()]
    if missing:
        require_files(root, missing[:MAX_LISTED], VOC_LAYOUT)
    records = []
    for offset, ((year, image_id), (xml, jpg)) in enumerate(zip(listed, files)):
        boxes, labels, difficult = parse_voc_xml(root / xml)
        records.append(make_record(first_id + offset, boxes, labels, difficult, str(root / jpg),
                                   name=f"VOC{year}/{image_id}"))
    return records


class VOCDetectionDataModule(DetectionDataModule):
    """PASCAL VOC 2007/2012 detection (20 classes) from ``root`` holding ``VOC2007/``, ``VOC2012/``.

    Args:
        root: devkit folder (see ``VOC_LAYOUT``).
        train_sets: (year, image set) pairs concatenated for training; default 07+12 trainval.
        val_sets: pairs for validation; default VOC2007 test.
        test_sets: pairs for testing; ``None`` means the validation sets.
        image_size, batch_size, num_workers, seed, augment: see :class:`DetectionDataModule`.
        train_difficult: keep ``difficult`` objects in training targets (eval always keeps and flags them).
    """

    def __init__(self, root: str, train_sets: VOCSets = (("2007", "trainval"), ("2012", "trainval")),
                 val_sets: VOCSets = (("2007", "test"),), test_sets: VOCSets | None = None,
                 image_size: int = 416, batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                 augment: bool = True, train_difficult: bool = False) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, train_difficult=train_difficult)
        self.root = root
        self.sets = {"train": _normalise(train_sets), "val": _normalise(val_sets),
                     "test": _normalise(val_sets if test_sets is None else test_sets)}

    @property
    def class_names(self) -> list[str]:
        return list(VOC_CLASSES)

    def make_dataset(self, split: str, transform: Transform) -> Dataset:
        records = read_voc_records(self.root, self.sets[split])
        drop = split == "train" and not self.train_difficult
        return RecordDataset(records, transform, drop_difficult=drop, class_names=VOC_CLASSES)

    def test_is_val(self) -> bool:
        return self.sets["test"] == self.sets["val"]


def _normalise(sets: VOCSets) -> list[tuple[str, str]]:
    """``[(year, set), ...]`` as strings (YAML may give years as ints); rejects malformed pairs."""
    out = []
    for pair in sets:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"VOC sets must be (year, image_set) pairs like ('2007', 'trainval'), got {pair!r}")
        out.append((str(pair[0]), str(pair[1])))
    if not out:
        raise ValueError("VOC sets must not be empty")
    return out
