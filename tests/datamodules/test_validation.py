"""Data checks at setup: one box rule for training and evaluation, unreadable files named or skipped."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from datamodules.validation import BadSampleError, readable_images, sanitize_boxes
from datamodules.voc import VOCDetectionDataModule
from tests.formats import write_voc_fixture


def test_box_rule_by_hand():
    boxes = np.array([[10, 10, 20, 20],      # fine
                      [20, 10, 10, 20],      # inverted: dropped
                      [5, 5, 5, 30],         # zero width: dropped
                      [np.nan, 0, 10, 10],   # NaN: dropped
                      [-5, 90, 30, 120],     # partly outside (h=100): clipped to [0, 90, 30, 100]
                      [200, 10, 220, 20]])   # wholly outside (w=100): dropped
    keep, counts = sanitize_boxes(boxes, height=100, width=100)
    assert keep.tolist() == [True, False, False, False, True, False]
    assert counts == {"non_finite": 1, "empty": 3, "clipped": 1}


def bad_voc(tmp_path):
    fix = write_voc_fixture(tmp_path, "2007", {"trainval": 4}, max_objects=1, seed=3)
    ids = fix["sets"]["trainval"]
    replacements = {ids[0]: ("<xmin>", "<xmin>999"),   # xmin 999x: far right of the image, inverted
                    ids[1]: ("<ymax>", "<ymax>nan")}   # ymax NaN
    for image_id, (old, new) in replacements.items():
        xml = tmp_path / "VOC2007" / "Annotations" / f"{image_id}.xml"
        text = xml.read_text()
        start = text.index(old) + len(old)
        end = text.index("<", start)
        xml.write_text(text[:start - len(old)] + new + text[end:])
    return fix, ids


def test_degenerate_boxes_follow_one_rule_in_training_and_evaluation(tmp_path):
    fix, ids = bad_voc(tmp_path)
    dm = VOCDetectionDataModule(str(tmp_path), train_sets=[("2007", "trainval")], val_sets=[("2007", "trainval")],
                                image_size=64, batch_size=2, augment=False)
    with pytest.warns(UserWarning, match=rf"train split: boxes fixed .*1 empty, 1 non-finite \(in VOC2007/{ids[0]}, "
                                         rf"VOC2007/{ids[1]}\)"):
        dm.setup("fit")
    train, val = dm.train_set.records, dm.val_set.records
    assert [len(r.boxes) for r in train] == [0, 0, 1, 1] == [len(r.boxes) for r in val]
    for a, b in zip(train, val):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    for record in train:
        assert np.isfinite(record.boxes).all() and (record.boxes[:, 2:] > record.boxes[:, :2]).all()


def test_unreadable_image_fails_at_setup_naming_the_file_or_is_skipped(tmp_path):
    fix = write_voc_fixture(tmp_path, "2007", {"test": 3})
    bad = tmp_path / "VOC2007" / "JPEGImages" / f"{fix['sets']['test'][1]}.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BadSampleError, match=rf"val split: cannot read image '{bad}'.*skip_bad_samples"):
        VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")]).setup("validate")
    dm = VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")], skip_bad_samples=True)
    with pytest.warns(UserWarning, match=rf"unreadable samples skipped: 1 skipped \(in {bad}\)"):
        dm.setup("validate")
    assert len(dm.val_set) == 2


def test_unreadable_annotation_is_skipped_when_asked(tmp_path):
    fix = write_voc_fixture(tmp_path, "2007", {"test": 3})
    xml = tmp_path / "VOC2007" / "Annotations" / f"{fix['sets']['test'][0]}.xml"
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match=rf"{xml}: not valid XML"):
        VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")]).setup("validate")
    dm = VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")], skip_bad_samples=True)
    with pytest.warns(UserWarning, match=rf"unreadable annotations skipped: 1 skipped \(in {xml}\)"):
        dm.setup("validate")
    assert len(dm.val_set) == 2


def test_an_empty_split_is_a_clear_error(tmp_path):
    write_voc_fixture(tmp_path, "2007", {"test": 1})
    (tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("")
    with pytest.raises(BadSampleError, match="val split is empty"):
        VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")]).setup("validate")


def test_readable_images_skips_the_unreadable_with_a_warning(tmp_path):
    fix = write_voc_fixture(tmp_path, "2007", {"test": 2})
    good = [str(tmp_path / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in fix["sets"]["test"]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match=f"cannot read image '{broken}'.*skipped"):
        assert readable_images([good[0], str(broken), good[1]]) == good
    with warnings.catch_warnings(), pytest.raises(BadSampleError, match="none of the 1 images"):
        warnings.simplefilter("ignore")
        readable_images([str(broken)])
