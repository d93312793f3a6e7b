"""MS-COCO detection read with pycocotools from a local root (nothing is downloaded).

Category ids (1..90 with gaps in COCO 2017) map to contiguous labels ``0..K-1`` in increasing id
order; ``label_to_category_id[label]`` maps back for writing COCO results. Boxes ``[x, y, w, h]``
become xyxy; ``iscrowd`` objects are flagged ``difficult`` (ignored in evaluation, dropped from
training targets unless ``train_difficult``); boxes of non-positive width or height are dropped,
counted and warned about by the box rule of :mod:`datamodules.detection.validation`. ``image_id`` is COCO's
own image id.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections import Counter
from pathlib import Path

from pycocotools.coco import COCO
from torch.utils.data import Dataset

from datamodules.common import require_files
from datamodules.detection.base import DetectionDataModule, DetectionRecord, RecordDataset, Transform, make_record

COCO_LAYOUT = """<root>/
  annotations/instances_train2017.json   (train_ann)
  annotations/instances_val2017.json     (val_ann)
  train2017/<file_name>.jpg              (train_images; file_name as in the json)
  val2017/<file_name>.jpg                (val_images)"""
MAX_LISTED = 10  # missing files named in an error


def load_coco(path: Path) -> COCO:
    """pycocotools ``COCO`` index of one instances json (its progress prints are silenced), checked by
    :func:`check_coco`."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(str(path))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a COCO instances json ({type(err).__name__}: {err})") from err
    check_coco(coco.dataset, path)
    return coco


def _ids(values: list) -> str:
    more = len(values) - MAX_LISTED
    return ", ".join(map(str, values[:MAX_LISTED])) + (f" and {more} more" if more > 0 else "")


def _is_box(bbox: object) -> bool:
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)


def check_coco(data: dict, path: Path) -> None:
    """What pycocotools' index lets pass silently, as errors naming the json file and the ids: image ids
    used twice (one image's boxes would go to the other picture), annotations of an image id the json
    lists no image of, a ``bbox`` that is not 4 numbers, a ``category_id`` not among the categories. An
    empty ``annotations`` list is only warned about."""
    counts = Counter(image["id"] for image in data.get("images", []))
    twice = sorted(image_id for image_id, count in counts.items() if count > 1)
    if twice:
        raise ValueError(f"{path}: image ids listed more than once in 'images': {_ids(twice)}")
    categories = {cat.get("id") for cat in data.get("categories", [])}
    annotations = data.get("annotations", [])
    for what, bad in (
            ("the image_id of no image in 'images'", [a for a in annotations if a.get("image_id") not in counts]),
            ("a bbox that is not 4 numbers [x, y, w, h]", [a for a in annotations if not _is_box(a.get("bbox"))]),
            (f"a category_id not among the categories {sorted(categories)}",
             [a for a in annotations if a.get("category_id") not in categories])):
        if bad:
            shown = [f"{a.get('id')} (image_id {a.get('image_id')}, category_id {a.get('category_id')}, "
                     f"bbox {a.get('bbox')!r})" for a in bad]
            raise ValueError(f"{path}: {len(bad)} annotations with {what}: annotation ids {_ids(shown)}")
    if not annotations:
        warnings.warn(f"{path}: the 'annotations' list is empty: every image of this split has no object",
                      stacklevel=2)


def coco_records(coco: COCO, image_dir: Path, category_ids: list[int]) -> list[DetectionRecord]:
    """One record per image in the index (images without annotations included), sorted by image id;
    the index must have passed :func:`check_coco`."""
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    records = []
    for image_id in sorted(coco.getImgIds()):
        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        path = image_dir / coco.imgs[image_id]["file_name"]
        records.append(make_record(int(image_id), boxes, labels, crowd, str(path), name=path.name))
    return records


class COCODetectionDataModule(DetectionDataModule):
    """COCO-format detection (any instances json, e.g. COCO 2017) from ``root``. Test split = val split.

    Args:
        root: dataset folder; the four paths below are relative to it (see ``COCO_LAYOUT``).
        train_ann, train_images: training annotation json and image folder.
        val_ann, val_images: validation annotation json and image folder.
        image_size, batch_size, num_workers, seed, augment, skip_bad_samples, mosaic: see
            :class:`DetectionDataModule`.
        train_difficult: keep crowd objects in training targets.
    """

    def __init__(self, root: str, train_ann: str = "annotations/instances_train2017.json",
                 train_images: str = "train2017", val_ann: str = "annotations/instances_val2017.json",
                 val_images: str = "val2017", image_size: int = 416, batch_size: int = 16, num_workers: int = 0,
                 seed: int = 0, augment: bool = True, train_difficult: bool = False,
                 skip_bad_samples: bool = False, mosaic: float = 0.0) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                         augment=augment, train_difficult=train_difficult, skip_bad_samples=skip_bad_samples,
                         mosaic=mosaic)
        self.root = root
        self.files = {"train": (train_ann, train_images), "val": (val_ann, val_images)}
        self._categories: list[dict] | None = None

    def categories(self) -> list[dict]:
        """COCO category dicts sorted by id, read once from the validation json (light to parse)."""
        if self._categories is None:
            ann, images = self.files["val"]
            root = require_files(self.root, [ann], COCO_LAYOUT)
            try:
                cats = json.loads((root / ann).read_text())["categories"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{root / ann}: no readable 'categories' list ({err})") from err
            self._categories = sorted(cats, key=lambda cat: cat["id"])
        return self._categories

    @property
    def class_names(self) -> list[str]:
        return [cat["name"] for cat in self.categories()]

    @property
    def label_to_category_id(self) -> list[int]:
        """COCO category id of each contiguous label."""
        return [int(cat["id"]) for cat in self.categories()]

    def make_dataset(self, split: str, transform: Transform) -> Dataset:
        ann, images = self.files["val" if split == "test" else split]
        root = require_files(self.root, [ann, images], COCO_LAYOUT)
        coco = load_coco(root / ann)
        ids = sorted(int(c) for c in coco.getCatIds())
        if ids != self.label_to_category_id:
            raise ValueError(f"{root / ann}: category ids {ids} differ from those of "
                             f"{root / self.files['val'][0]} {self.label_to_category_id}")
        records = coco_records(coco, root / images, ids)
        missing = [str(Path(r.path).relative_to(root)) for r in records if not Path(r.path).is_file()]
        if missing:
            require_files(root, missing[:MAX_LISTED], COCO_LAYOUT)
        drop = split == "train" and not self.train_difficult
        return RecordDataset(records, transform, drop_difficult=drop, class_names=self.class_names,
                             mosaic=self.mosaic_for(split))

    def test_is_val(self) -> bool:
        return True
