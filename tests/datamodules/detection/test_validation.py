"""Data checks at setup: one box rule for training and evaluation, unreadable files named or skipped."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from datamodules.detection import validation
from datamodules.detection.validation import BadSampleError, readable_images, sanitize_boxes
from datamodules.detection.voc import VOCDetectionDataModule
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


def _cut_in_half(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_an_image_cut_in_half_fails_at_setup_before_any_update(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path / "cache"))
    fix = write_voc_fixture(tmp_path, "2007", {"trainval": 6, "test": 3})
    cut = tmp_path / "VOC2007" / "JPEGImages" / f"{fix['sets']['trainval'][3]}.jpg"
    _cut_in_half(cut)  # its header still reads: only decoding it fails
    dm = VOCDetectionDataModule(str(tmp_path), train_sets=[("2007", "trainval")], val_sets=[("2007", "test")])
    with pytest.raises(BadSampleError, match=rf"train split: cannot decode image '{cut}': image file is truncated"
                                             r".*skip_bad_samples: true"):
        dm.setup("fit")
    dm = VOCDetectionDataModule(str(tmp_path), train_sets=[("2007", "trainval")], val_sets=[("2007", "test")],
                                skip_bad_samples=True)
    with pytest.warns(UserWarning, match=rf"train split: unreadable samples skipped: 1 skipped \(in {cut}\)"):
        dm.setup("fit")
    assert len(dm.train_set) == 5 and str(cut) not in [r.path for r in dm.train_set.records]


def test_a_split_found_decodable_is_not_decoded_again_unless_a_file_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path / "cache"))
    fix = write_voc_fixture(tmp_path, "2007", {"test": 3})
    paths = [str(tmp_path / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in fix["sets"]["test"]]
    calls, decode = [], validation.decode_error
    monkeypatch.setattr(validation, "decode_error", lambda path: calls.append(path) or decode(path))
    assert validation.undecodable(paths) == {} and len(calls) == 3
    assert validation.undecodable(paths) == {} and len(calls) == 3  # recorded: nothing decoded
    _cut_in_half(Path(paths[1]))
    assert list(validation.undecodable(paths)) == [paths[1]] and len(calls) == 6


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_breaks_after_setup_is_skipped_where_it_is_decoded_and_counted(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path / "cache"))
    fix = write_voc_fixture(tmp_path, "2007", {"test": 4})
    dm = VOCDetectionDataModule(str(tmp_path), val_sets=[("2007", "test")], image_size=32, batch_size=2,
                                num_workers=workers, skip_bad_samples=True)
    dm.setup("validate")
    cut = tmp_path / "VOC2007" / "JPEGImages" / f"{fix['sets']['test'][0]}.jpg"
    _cut_in_half(cut)  # e.g. a network file system hiccup during training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs
            batches = list(dm.val_dataloader())
            assert [len(b["targets"]) for b in batches] == [2, 2] and all("skipped" not in b for b in batches)
            ids = [t["image_id"] for b in batches for t in b["targets"]]
            assert ids == [2, 2, 3, 4]  # the next image stands in for the skipped one
    messages = [str(w.message) for w in caught]
    assert sum(f"val split: cannot decode image '{cut}': skipped" in m for m in messages) == 1  # once per file
    assert sum("val split: 1 samples skipped at decode time in this pass" in m for m in messages) == 2  # each epoch
    dm.val_set.skip_bad_samples = False  # without it, the error names the file
    with pytest.raises(OSError, match=rf"cannot read image '{cut}'.*skip_bad_samples: true skips"):
        next(iter(dm.val_dataloader()))
