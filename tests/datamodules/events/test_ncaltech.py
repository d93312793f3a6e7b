"""N-Caltech101 detection: recordings and box annotations written in their formats, read back."""
import numpy as np
import pytest
import torch

from datamodules.detection.base import collate_detection
from datamodules.events.ncaltech import NCaltechDetectionDataModule, read_annotation
from tests.event_formats import random_events, write_atis_bin, write_ncaltech_annotation


def _write(root, classes=("airplanes", "Faces_easy", "watch"), per_class=4):
    rng, written = np.random.default_rng(0), {}
    for name in classes:
        for k in range(1, per_class + 1):
            ev = random_events(rng, 60, 230, 170, 300_000)
            ev["x"], ev["y"] = ev["x"] + 5, ev["y"] + 5  # sensor coordinates, not starting at 0
            box = tuple(int(v) for v in (rng.integers(0, 100), rng.integers(0, 80), rng.integers(120, 239),
                                         rng.integers(100, 179)))
            write_atis_bin(root / "NCALTECH101" / "Caltech101" / name / f"image_{k:04d}.bin", ev)
            write_ncaltech_annotation(root / "NCALTECH101" / "Caltech101_annotations" / name /
                                      f"annotation_{k:04d}.bin", *box)
            written[f"{name}/image_{k:04d}"] = (ev, box)
    return written


def test_annotation_file_read_back(tmp_path):
    write_ncaltech_annotation(tmp_path / "a.bin", 12, 7, 150, 99)
    np.testing.assert_array_equal(read_annotation(tmp_path / "a.bin"), [12, 7, 150, 99])
    (tmp_path / "b.bin").write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="b.bin"):
        read_annotation(tmp_path / "b.bin")


def test_samples_keep_sensor_coordinates_and_boxes(tmp_path):
    written = _write(tmp_path)
    data = NCaltechDetectionDataModule(str(tmp_path), num_steps=3, image_size=120, clip_count=None, batch_size=2)
    assert data.class_names == ["Faces_easy", "airplanes", "watch"] and data.num_classes == 3
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) + len(data.split_ids["test"]) == 12
    item = data.train_set[0]
    ev, box = written[item["target"]["name"]]
    assert item["image"].shape == (3, 2, 120, 120)
    torch.testing.assert_close(item["target"]["orig_boxes"], torch.tensor([box], dtype=torch.float32))
    torch.testing.assert_close(item["target"]["boxes"], torch.tensor([box], dtype=torch.float32) * 0.5)
    assert data.class_names[item["target"]["labels"].item()] == item["target"]["name"].split("/")[0]
    # events keep their sensor positions: at half scale, no count lands left of x = 5 / 2 or above y = 5 / 2
    counts = item["image"].sum(dim=(0, 1))
    assert counts[:, :2].sum() == 0 and counts[:2, :].sum() == 0 and counts.sum() > 0
    batch = collate_detection([data.train_set[0], data.train_set[1]])
    assert batch["images"].shape == (2, 3, 2, 120, 120)


def test_missing_annotation_is_named(tmp_path):
    _write(tmp_path, classes=("watch",), per_class=1)
    (tmp_path / "NCALTECH101" / "Caltech101_annotations" / "watch" / "annotation_0001.bin").unlink()
    with pytest.raises(FileNotFoundError, match="annotation_0001.bin"):
        NCaltechDetectionDataModule(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        NCaltechDetectionDataModule(str(tmp_path / "nowhere"))
