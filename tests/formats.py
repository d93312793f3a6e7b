"""Writers of tiny datasets in the real published on-disk formats, for tests and end-to-end checks.

Images are learnable: a plain noisy grey background with one filled rectangle per object, whose
colour depends only on the object's class, exactly covering the annotated box. Rectangles of one
image do not overlap. Everything is deterministic from ``seed``.
"""
from __future__ import annotations

import colorsys
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.detection.voc import VOC_CLASSES

SIZES = ((96, 128), (128, 96), (112, 112))  # (height, width) cycled over images


def class_color(index: int, total: int = 20) -> tuple[int, int, int]:
    """Distinct saturated colour of class ``index`` (hue spaced over ``total`` classes)."""
    r, g, b = colorsys.hsv_to_rgb(index / total, 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _place_rects(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping integer rectangles ``(x0, y0, x1, y1)`` (exclusive end), side >= 1/5."""
    rects: list[tuple[int, int, int, int]] = []
    for _ in range(count * 20):
        if len(rects) == count:
            break
        w = int(rng.integers(width // 5, width // 2 + 1))
        h = int(rng.integers(height // 5, height // 2 + 1))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        rect = (x0, y0, x0 + w, y0 + h)
        if all(rect[2] <= o[0] or o[2] <= rect[0] or rect[3] <= o[1] or o[3] <= rect[1] for o in rects):
            rects.append(rect)
    return rects


def _draw(rng: np.random.Generator, height: int, width: int, rects: list, colors: list) -> np.ndarray:
    """uint8 ``[H, W, 3]``: grey background with noise, rectangle ``i`` filled with ``colors[i]``."""
    image = rng.normal(110.0, 6.0, size=(height, width, 3))
    for (x0, y0, x1, y1), color in zip(rects, colors):
        image[y0:y1, x0:x1] = color
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _voc_xml(folder: str, image_id: str, height: int, width: int, objects: list[dict]) -> ET.ElementTree:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(ann, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(ann, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"]))
        bnd = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bndbox"]):
            ET.SubElement(bnd, key).text = str(value)
    return ET.ElementTree(ann)


def write_voc_fixture(root: str | Path, year: str = "2007", sets: dict[str, int] | None = None,
                      classes: tuple[str, ...] = ("car", "person", "dog"), max_objects: int = 3,
                      difficult_every: int = 4, seed: int = 0) -> dict[str, Any]:
    """Write ``<root>/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}`` in the VOC devkit format.

    Args:
        root: devkit folder (created); call again with another ``year`` to add e.g. VOC2012.
        year: "2007" names images ``000001``; other years ``<year>_000001``.
        sets: image-set name -> number of images, e.g. ``{"trainval": 6, "test": 4}`` (disjoint ids).
        classes: VOC class names used (object class is drawn uniformly from them).
        max_objects: 1..max_objects objects per image.
        difficult_every: every n-th object written (counting over the whole call) is difficult; 0: none.

    Returns:
        ``{"root": Path, "year": str, "sets": {set: [ids]}, "images": {id: {"size": (h, w),
        "objects": [{"name", "label" (index in VOC order), "bndbox": (xmin, ymin, xmax, ymax) as
        written (1-based inclusive), "box": (x1, y1, x2, y2) continuous xyxy, "difficult": bool}]}}}``
    """
    sets = {"trainval": 6, "test": 4} if sets is None else sets
    base = Path(root) / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"root": Path(root), "year": year, "sets": {}, "images": {}}
    counter, n_objects = 0, 0
    for set_name, count in sets.items():
        ids = []
        for _ in range(count):
            counter += 1
            image_id = f"{counter:06d}" if year == "2007" else f"{year}_{counter:06d}"
            height, width = SIZES[counter % len(SIZES)]
            rects = _place_rects(rng, height, width, int(rng.integers(1, max_objects + 1)))
            objects = []
            for x0, y0, x1, y1 in rects:
                name = classes[int(rng.integers(len(classes)))]
                n_objects += 1
                hard = difficult_every > 0 and n_objects % difficult_every == 0
                objects.append({"name": name, "label": VOC_CLASSES.index(name), "difficult": hard,
                                "bndbox": (x0 + 1, y0 + 1, x1, y1),
                                "box": (float(x0), float(y0), float(x1), float(y1))})
            colors = [class_color(o["label"]) for o in objects]
            Image.fromarray(_draw(rng, height, width, rects, colors)).save(
                base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            _voc_xml(f"VOC{year}", image_id, height, width, objects).write(base / "Annotations" / f"{image_id}.xml")
            out["images"][image_id] = {"size": (height, width), "objects": objects}
            ids.append(image_id)
        (base / "ImageSets" / "Main" / f"{set_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        out["sets"][set_name] = ids
    return out


def _coco_annotation(ann_id: int, image_id: int, category_id: int, rect: tuple, size: tuple, crowd: bool) -> dict:
    x0, y0, x1, y1 = rect
    if crowd:  # crowd regions carry an RLE mask, as in the real files
        mask = np.zeros(size, np.uint8, order="F")
        mask[y0:y1, x0:x1] = 1
        rle = mask_utils.encode(mask)
        segmentation: Any = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": int(crowd),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float((x1 - x0) * (y1 - y0)), "segmentation": segmentation}


def write_coco_fixture(root: str | Path, splits: dict[str, int] | None = None,
                       categories: tuple[tuple[int, str], ...] = ((1, "person"), (3, "car"), (18, "dog")),
                       max_objects: int = 3, seed: int = 0) -> dict[str, Any]:
    """Write ``<root>/annotations/instances_<split>.json`` and ``<root>/<split>/<file>.jpg`` (COCO format).

    Image ids are sparse (``1000 + 7 * n``), annotation ids start at 1, category ids keep their
    gaps. In every split the first object of the first image is a crowd region (``iscrowd=1``)
    and the last image has no annotation.

    Returns:
        ``{"root": Path, "categories": [...], "splits": {split: {"ann_file": Path, "image_dir": Path,
        "json": the written dict}}}``
    """
    splits = {"train2017": 5, "val2017": 4} if splits is None else splits
    rng = np.random.default_rng(seed)
    cats = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in categories]
    out: dict[str, Any] = {"root": Path(root), "categories": cats, "splits": {}}
    (Path(root) / "annotations").mkdir(parents=True, exist_ok=True)
    counter, ann_id = 0, 0
    for split, count in splits.items():
        image_dir = Path(root) / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for index in range(count):
            counter += 1
            image_id = 1000 + 7 * counter
            height, width = SIZES[counter % len(SIZES)]
            n = 0 if index == count - 1 else int(rng.integers(1, max_objects + 1))
            rects = _place_rects(rng, height, width, n)
            cat_index = [int(rng.integers(len(cats))) for _ in rects]
            colors = [class_color(i, len(cats)) for i in cat_index]
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(_draw(rng, height, width, rects, colors)).save(image_dir / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for k, (rect, ci) in enumerate(zip(rects, cat_index)):
                ann_id += 1
                anns.append(_coco_annotation(ann_id, image_id, cats[ci]["id"], rect, (height, width),
                                             crowd=index == 0 and k == 0))
        data = {"info": {"description": "spikeloc test fixture"}, "licenses": [], "images": images,
                "annotations": anns, "categories": cats}
        ann_file = Path(root) / "annotations" / f"instances_{split}.json"
        ann_file.write_text(json.dumps(data))
        out["splits"][split] = {"ann_file": ann_file, "image_dir": image_dir, "json": data}
    return out
