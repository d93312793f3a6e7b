"""VOC devkit reading: exact boxes/labels/difficult/ids, 07+12 sets, letterbox round trip, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.detection.voc import VOC_CLASSES, VOCDetectionDataModule
from tests.formats import write_voc_fixture


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("VOCdevkit")
    fix07 = write_voc_fixture(root, "2007", {"trainval": 5, "test": 4}, seed=0)
    fix12 = write_voc_fixture(root, "2012", {"trainval": 3}, seed=1)
    return {"root": root, "2007": fix07, "2012": fix12}


def expected(fixture: dict, image_id: str, drop_difficult: bool = False) -> tuple:
    objects = [o for o in fixture["images"][image_id]["objects"] if not (drop_difficult and o["difficult"])]
    return ([list(o["box"]) for o in objects], [o["label"] for o in objects], [o["difficult"] for o in objects])


def test_07_12_train_and_07_test_load_exactly(voc: dict) -> None:
    dm = VOCDetectionDataModule(str(voc["root"]), image_size=64, batch_size=2, augment=False)
    assert dm.num_classes == 20 and dm.class_names == VOC_CLASSES
    dm.setup("fit")
    train_ids = [("2007", i) for i in voc["2007"]["sets"]["trainval"]] + \
                [("2012", i) for i in voc["2012"]["sets"]["trainval"]]
    assert len(dm.train_set) == len(train_ids) == 8
    for index, (year, name) in enumerate(train_ids):  # training drops difficult objects by default
        target = dm.train_set[index]["target"]
        boxes, labels, difficult = expected(voc[year], name, drop_difficult=True)
        assert target["orig_boxes"].tolist() == boxes and target["labels"].tolist() == labels
        assert target["image_id"] == index + 1 and not target["difficult"].any()
        assert target["orig_size"] == voc[year]["images"][name]["size"]
    test_ids = voc["2007"]["sets"]["test"]
    assert len(dm.val_set) == len(test_ids)
    flagged = 0
    for index, name in enumerate(test_ids):  # evaluation keeps difficult objects, flagged
        target = dm.val_set[index]["target"]
        boxes, labels, difficult = expected(voc["2007"], name)
        assert target["orig_boxes"].tolist() == boxes and target["labels"].tolist() == labels
        assert target["difficult"].tolist() == difficult and target["image_id"] == index + 1
        pad = torch.tensor(target["pad"] * 2)
        assert torch.allclose((target["boxes"] - pad) / target["scale"], target["orig_boxes"], atol=1e-4)
        height, width = target["orig_size"]
        assert target["scale"] == pytest.approx(64 / max(height, width))
        flagged += sum(difficult)
    assert flagged > 0  # the fixture really exercised difficult objects


def test_train_difficult_kept_when_asked_and_loader_contract(voc: dict) -> None:
    dm = VOCDetectionDataModule(str(voc["root"]), train_sets=[("2007", "trainval")], image_size=64,
                                batch_size=3, train_difficult=True, seed=5)
    dm.setup("fit")
    total = sum(len(expected(voc["2007"], i)[1]) for i in voc["2007"]["sets"]["trainval"])
    hard = sum(sum(expected(voc["2007"], i)[2]) for i in voc["2007"]["sets"]["trainval"])
    assert hard > 0
    plain = VOCDetectionDataModule(str(voc["root"]), train_sets=[("2007", "trainval")], image_size=64,
                                   augment=False, train_difficult=True)
    plain.setup("fit")
    assert sum(len(plain.train_set[i]["target"]["labels"]) for i in range(5)) == total
    batches = list(dm.train_dataloader())
    assert [b["images"].shape for b in batches] == [(3, 3, 64, 64), (2, 3, 64, 64)]
    ids = sorted(t["image_id"] for b in batches for t in b["targets"])
    assert ids == [1, 2, 3, 4, 5]
    for target in (t for b in batches for t in b["targets"]):
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 64)).all()
        assert len(target["boxes"]) == len(target["labels"]) == len(target["difficult"])


def test_missing_root_names_expected_layout(tmp_path: Path) -> None:
    dm = VOCDetectionDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        dm.setup("fit")
    assert "Annotations" in str(err.value) and "JPEGImages" in str(err.value) and "ImageSets/Main" in str(err.value)


def test_missing_year_folder_is_named(tmp_path: Path) -> None:
    write_voc_fixture(tmp_path, "2007", {"trainval": 1, "test": 1})
    dm = VOCDetectionDataModule(str(tmp_path))  # default train_sets include VOC2012
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/val.txt"):
        VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "val")]).setup("validate")


def test_missing_image_and_bad_annotation_are_named(tmp_path: Path) -> None:
    fix = write_voc_fixture(tmp_path, "2007", {"test": 2})
    first, second = fix["sets"]["test"]
    dm = VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")])
    (tmp_path / "VOC2007" / "JPEGImages" / f"{first}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"VOC2007/JPEGImages/{first}.jpg"):
        dm.setup("validate")
    xml = tmp_path / "VOC2007" / "Annotations" / f"{second}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra", 1))
    (tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text(f"{second}\n")
    with pytest.raises(ValueError, match=rf"{second}\.xml.*zebra"):
        dm.setup("validate")


def test_cli_types_parse_from_yaml_values(voc: dict) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(VOCDetectionDataModule, "data")
    cfg = parser.parse_object({"data": {"root": str(voc["root"]), "train_sets": [[2007, "trainval"]],
                                        "image_size": 64}})
    dm = VOCDetectionDataModule(**cfg.data)
    dm.setup("fit")
    assert len(dm.train_set) == 5


def test_own_classes_folder_and_set_names(tmp_path: Path) -> None:
    from PIL import Image

    fix = write_voc_fixture(tmp_path, "2007", {"mine": 3, "held_out": 2}, seed=3)
    (tmp_path / "VOC2007").rename(tmp_path / "MyData")  # a folder in VOC layout, not a VOC year
    first = fix["sets"]["mine"][0]
    jpg = tmp_path / "MyData" / "JPEGImages" / f"{first}.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))  # people label PNGs too
    jpg.unlink()
    names = ["dog", "person", "car"]  # their own classes, in their own order
    dm = VOCDetectionDataModule(str(tmp_path), train_sets=[("MyData", "mine")], val_sets=[["MyData", "held_out"]],
                                class_names=names, image_size=64, augment=False)
    assert dm.num_classes == 3 and dm.class_names == names
    dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    for index, image_id in enumerate(fix["sets"]["mine"]):
        objects = fix["images"][image_id]["objects"]
        target = dm.train_set[index]["target"]
        kept = [o for o in objects if not o["difficult"]]
        assert target["labels"].tolist() == [names.index(o["name"]) for o in kept]
    with pytest.raises(ValueError, match="distinct"):
        VOCDetectionDataModule(str(tmp_path), class_names=["dog", "dog"])


def test_unknown_class_names_file_name_and_allowed_names(tmp_path: Path) -> None:
    fix = write_voc_fixture(tmp_path, "2007", {"test": 2}, classes=("car",), seed=4)
    dm = VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")], class_names=["person", "dog"])
    with pytest.raises(ValueError) as err:
        dm.setup("validate")
    message = str(err.value)
    assert f"{fix['sets']['test'][0]}.xml" in message and "'car'" in message and "['person', 'dog']" in message


def test_plain_resize_without_letterbox(voc: dict) -> None:
    dm = VOCDetectionDataModule(str(voc["root"]), val_sets=[("2007", "test")], image_size=64, letterbox=False)
    dm.setup("validate")
    for index in range(len(dm.val_set)):
        sample = dm.val_set[index]
        target = sample["target"]
        height, width = target["orig_size"]
        assert sample["image"].shape == (3, 64, 64) and target["pad"] == (0.0, 0.0)
        sx, sy = target["scale"]
        assert (sx, sy) == pytest.approx((64 / width, 64 / height))
        torch.testing.assert_close(target["boxes"], target["orig_boxes"] * torch.tensor([sx, sy, sx, sy]))
    reference = VOCDetectionDataModule(str(voc["root"]), train_sets=[("2007", "trainval")], image_size=64,
                                       letterbox=False, augmentation="reference")
    reference.setup("fit")
    assert reference.train_set[0]["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="augmentation"):
        VOCDetectionDataModule(str(voc["root"]), augmentation="mosaic")
