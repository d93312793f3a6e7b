"""COCO json reading: contiguous labels and back, xywh -> xyxy, crowd as difficult, COCO image ids."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from datamodules.detection.coco import COCODetectionDataModule
from tests.formats import write_coco_fixture


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_coco_fixture(tmp_path_factory.mktemp("coco"), {"train2017": 4, "val2017": 3}, seed=2)


def expected(fixture: dict, split: str, drop_crowd: bool) -> dict[int, tuple]:
    """image id -> (xyxy boxes, contiguous labels, crowd flags) computed from the written json."""
    label_of = {1: 0, 3: 1, 18: 2}
    out = {}
    for image in fixture["splits"][split]["json"]["images"]:
        anns = [a for a in fixture["splits"][split]["json"]["annotations"] if a["image_id"] == image["id"]]
        anns = [a for a in anns if not (drop_crowd and a["iscrowd"])]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        out[image["id"]] = (boxes, [label_of[a["category_id"]] for a in anns], [bool(a["iscrowd"]) for a in anns])
    return out


def test_categories_map_to_contiguous_labels_and_back(coco: dict) -> None:
    dm = COCODetectionDataModule(str(coco["root"]), image_size=64)
    assert dm.class_names == ["person", "car", "dog"] and dm.num_classes == 3
    assert dm.label_to_category_id == [1, 3, 18]


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_load_exactly(coco: dict, split: str) -> None:
    dm = COCODetectionDataModule(str(coco["root"]), image_size=64, augment=False)
    dm.setup("fit")
    dataset = dm.train_set if split == "train" else dm.val_set
    truth = expected(coco, f"{split}2017", drop_crowd=split == "train")
    assert [dataset[i]["target"]["image_id"] for i in range(len(dataset))] == sorted(truth)
    crowd = empty = 0
    for i in range(len(dataset)):
        target = dataset[i]["target"]
        boxes, labels, difficult = truth[target["image_id"]]
        assert target["orig_boxes"].tolist() == boxes and target["labels"].tolist() == labels
        assert target["difficult"].tolist() == difficult
        pad = torch.tensor(target["pad"] * 2)
        assert torch.allclose(target["orig_boxes"] * target["scale"] + pad, target["boxes"], atol=1e-4)
        crowd += sum(difficult)
        empty += len(labels) == 0
        assert target["boxes"].shape == (len(labels), 4)
    assert empty == 1 and crowd == (0 if split == "train" else 1)  # fixture's crowd region and empty image


def test_val_loader_and_test_equals_val(coco: dict) -> None:
    dm = COCODetectionDataModule(str(coco["root"]), image_size=48, batch_size=2)
    dm.setup("validate")
    dm.setup("test")
    assert dm.test_set is dm.val_set
    batches = list(dm.test_dataloader())
    assert [b["images"].shape[0] for b in batches] == [2, 1]
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco["splits"]["val2017"]["json"]["images"]}
    for target in (t for b in batches for t in b["targets"]):
        assert target["orig_size"] == sizes[target["image_id"]]


def test_missing_files_are_named(tmp_path: Path, coco: dict) -> None:
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        COCODetectionDataModule(str(tmp_path)).num_classes
    dm = COCODetectionDataModule(str(coco["root"]), train_ann="annotations/instances_missing.json")
    with pytest.raises(FileNotFoundError, match="instances_missing.json"):
        dm.setup("fit")
    fix = write_coco_fixture(tmp_path / "broken", {"val2017": 2})
    first = fix["splits"]["val2017"]["json"]["images"][0]["file_name"]
    (fix["splits"]["val2017"]["image_dir"] / first).unlink()
    with pytest.raises(FileNotFoundError, match=first):
        COCODetectionDataModule(str(tmp_path / "broken")).setup("validate")


def _broken(tmp_path: Path, change) -> tuple[Path, dict]:
    """A fixture whose train json is rewritten by ``change(json)``; returns (json path, written json)."""
    fix = write_coco_fixture(tmp_path / "coco", {"train2017": 4, "val2017": 2}, seed=3)
    split = fix["splits"]["train2017"]
    data = split["json"]
    change(data)
    split["ann_file"].write_text(json.dumps(data))
    return split["ann_file"], data


def _same_id(data: dict) -> None:
    data["images"][2]["id"] = data["images"][1]["id"]  # another picture of another size under one id


def _orphan(data: dict) -> None:
    data["annotations"][0]["image_id"] = 99_999


def _short_box(data: dict) -> None:
    data["annotations"][1]["bbox"] = [10.0, 20.0, 30.0]


def _unknown_category(data: dict) -> None:
    data["annotations"][2]["category_id"] = 77


@pytest.mark.parametrize("change, message", [
    (_same_id, "image ids listed more than once in 'images': {image}"),
    (_orphan, "1 annotations with the image_id of no image in 'images': annotation ids {ann0} .image_id 99999"),
    (_short_box, "1 annotations with a bbox that is not 4 numbers .x, y, w, h.: annotation ids {ann1} "),
    (_unknown_category, "1 annotations with a category_id not among the categories .1, 3, 18.: annotation ids {ann2} "),
])
def test_a_json_that_pycocotools_would_read_wrongly_fails_at_setup_naming_file_and_ids(tmp_path, change, message):
    path, data = _broken(tmp_path, change)
    ids = {"image": data["images"][1]["id"], **{f"ann{k}": data["annotations"][k]["id"] for k in range(3)}}
    module = COCODetectionDataModule(str(tmp_path / "coco"), augment=False)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: " + message.format(**ids)):
        module.setup("fit")


def test_an_empty_annotations_list_trains_but_is_warned_about(tmp_path):
    path, _ = _broken(tmp_path, lambda data: data.update(annotations=[]))
    module = COCODetectionDataModule(str(tmp_path / "coco"), augment=False)
    with pytest.warns(UserWarning, match=f"{re.escape(str(path))}: the 'annotations' list is empty"):
        module.setup("fit")
    assert len(module.train_set) == 4 and all(len(r.labels) == 0 for r in module.train_set.records)
