"""Mosaic augmentation: hand-worked tiling, box validity, reproducibility and the datamodule option."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules.detection.base import make_record, make_sample, read_rgb
from datamodules.detection.mosaic import Mosaic, quadrants, tile_mosaic
from datamodules.detection.voc import VOCDetectionDataModule
from tests.formats import write_voc_fixture

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
WHITE = (255, 255, 255)
# (height, width), boxes, labels; with size 100 and centre (40, 60) the quadrants are
# TL 40x60, TR 60x60, BL 40x40, BR 60x40 (w x h)
SOURCES = [((30, 20), [[4, 6, 16, 24]], [0]),  # scale max(40/20, 60/30) = 2, nothing cut
           ((20, 40), [[0, 0, 20, 10]], [1]),  # scale 3 -> 120 x 60, right 60 columns cut
           ((20, 20), [[10, 0, 20, 10]], [2]),  # scale 2, nothing cut
           ((10, 30), [[20, 2, 30, 8], [5, 1, 20, 9]], [3, 4])]  # scale 4 -> 120 x 40, right 60 cut
# by hand: box * scale - cut, clipped to the quadrant, + quadrant origin; label 3's box lies wholly
# in the cut part ([80, 8, 120, 32]) and is dropped, label 4's ([20, 4, 80, 36]) is clipped to x <= 60
EXPECTED = [[[8, 12, 32, 48]], [[40, 0, 100, 30]], [[20, 60, 40, 80]], [[60, 64, 100, 96]]]


def source(k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Image ``k``: solid ``COLORS[k]`` with its boxes painted white; boxes float ``[N, 4]``."""
    (height, width), boxes, _ = SOURCES[k]
    image = torch.tensor(COLORS[k], dtype=torch.uint8)[:, None, None].repeat(1, height, width)
    for x0, y0, x1, y1 in boxes:
        image[:, y0:y1, x0:x1] = torch.tensor(WHITE, dtype=torch.uint8)[:, None, None]
    return image, np.asarray(boxes, np.float32)


def test_hand_worked_mosaic_places_colours_and_boxes() -> None:
    images, boxes = zip(*(source(k) for k in range(4)))
    canvas, out, keeps = tile_mosaic(list(images), list(boxes), 100, (40, 60))
    assert canvas.shape == (3, 100, 100) and canvas.dtype == torch.uint8
    for k, expected in enumerate(EXPECTED):
        np.testing.assert_allclose(out[k], expected, atol=1e-5)
    assert [m.tolist() for m in keeps] == [[True], [True], [True], [False, True]]
    for (x0, y0, x1, y1), color, expected in zip(quadrants(100, (40, 60)), COLORS, EXPECTED):
        for x, y in ((x0, y0), (x1 - 1, y1 - 1), (x0, y1 - 1), (x1 - 1, y0)):  # quadrant corners
            if not any(bx0 <= x < bx1 and by0 <= y < by1 for bx0, by0, bx1, by1 in expected):
                assert canvas[:, y, x].tolist() == list(color), (x, y)
        for bx0, by0, bx1, by1 in expected:  # the white box content moved with its box
            assert canvas[:, (by0 + by1) // 2, (bx0 + bx1) // 2].tolist() == list(WHITE)


def test_mosaic_record_keeps_labels_of_surviving_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = [(source(k)[0], make_record(k + 1, source(k)[1], SOURCES[k][2], [False] * len(SOURCES[k][2]),
                                       name=f"img{k}")) for k in range(4)]
    mosaic = Mosaic(1.0, 100)
    monkeypatch.setattr(mosaic, "draw", lambda index, length: ([2, 1, 0, 3], (40, 60)))
    image, record = mosaic(lambda i: data[i], 2, 4)
    assert image.shape == (3, 100, 100) and record.image_id == 3 and record.path is None
    assert record.labels.tolist() == [2, 1, 0, 4]
    assert record.difficult.dtype == bool and len(record.difficult) == 4
    # image 2 top-left (40 x 60): scale max(40/20, 60/20) = 3 -> 60 x 60, 20 columns cut on the left:
    # [10, 0, 20, 10] * 3 - (20, 0) = [10, 0, 40, 30]
    assert record.boxes[0].tolist() == pytest.approx([10, 0, 40, 30])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(4, 60), st.integers(4, 60)), min_size=4, max_size=4),
       st.integers(16, 48), st.integers(16, 48), st.integers(0, 2 ** 31 - 1))
def test_boxes_stay_in_their_quadrant_and_non_degenerate(sizes: list, cx: int, cy: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for height, width in sizes:
        images.append(torch.zeros((3, height, width), dtype=torch.uint8))
        corners = rng.uniform(-5, [width + 5, height + 5], size=(6, 2, 2))
        boxes.append(np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32))
    canvas, out, keeps = tile_mosaic(images, boxes, 64, (cx, cy))
    assert canvas.shape == (3, 64, 64)
    for (x0, y0, x1, y1), kept, keep in zip(quadrants(64, (cx, cy)), out, keeps):
        assert len(kept) == keep.sum()
        assert (kept[:, 0] >= x0).all() and (kept[:, 1] >= y0).all()
        assert (kept[:, 2] <= x1).all() and (kept[:, 3] <= y1).all()
        assert (kept[:, 2] > kept[:, 0]).all() and (kept[:, 3] > kept[:, 1]).all()


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("VOCdevkit")
    write_voc_fixture(root, "2007", {"trainval": 6, "test": 2}, seed=5)
    return root


def train_set(root: Path, **kwargs) -> object:
    dm = VOCDetectionDataModule(str(root), train_sets=[("2007", "trainval")], image_size=64, **kwargs)
    dm.setup("fit")
    return dm.train_set


def test_mosaic_zero_leaves_samples_unchanged(voc: Path) -> None:
    dataset = train_set(voc, mosaic=0.0)
    assert dataset.mosaic is None
    for index in range(3):
        torch.manual_seed(index)
        got = dataset[index]
        torch.manual_seed(index)
        record = dataset.records[index]
        plain = make_sample(read_rgb(record.path), record, dataset.transform, dataset.drop_difficult)
        torch.testing.assert_close(got["image"], plain["image"])
        torch.testing.assert_close(got["target"]["boxes"], plain["target"]["boxes"])


@pytest.mark.parametrize("augmentation", ["spikeloc", "reference"])
def test_mosaic_samples_keep_the_contract_and_are_reproducible(voc: Path, augmentation: str) -> None:
    plain = train_set(voc, augmentation=augmentation)[0]
    dataset = train_set(voc, augmentation=augmentation, mosaic=1.0)
    samples = []
    for _ in range(2):
        torch.manual_seed(11)
        samples.append([dataset[i] for i in range(len(dataset))])
    for first, second in zip(*samples):
        torch.testing.assert_close(first["image"], second["image"])
        torch.testing.assert_close(first["target"]["boxes"], second["target"]["boxes"])
        assert first["target"]["labels"].tolist() == second["target"]["labels"].tolist()
    for sample in samples[0]:
        target = sample["target"]
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
        assert target.keys() == plain["target"].keys() and target["orig_size"] == (64, 64)
        boxes = target["boxes"]
        assert len(boxes) == len(target["labels"]) == len(target["difficult"]) == len(target["orig_boxes"])
        assert ((boxes >= 0) & (boxes <= 64)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
        assert not target["difficult"].any()  # difficult objects of all four images left out in training
    assert sum(len(s["target"]["boxes"]) for s in samples[0]) > 0


def test_invalid_probability_names_mosaic_and_range(voc: Path) -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"mosaic must be a probability in \[0, 1\]"):
            VOCDetectionDataModule(str(voc), mosaic=bad)
