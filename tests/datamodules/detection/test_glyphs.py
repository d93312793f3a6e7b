"""The embedded glyph detection set: determinism, exact boxes inside the image, classes, batch contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.detection.glyphs import CLASS_NAMES, GlyphsDataset, GlyphsDetectionDataModule, render_glyph
from datamodules.detection.transforms import eval_transform


def dataset(seed: int, split: str = "train", length: int = 12) -> GlyphsDataset:
    return GlyphsDataset(length, split, seed, eval_transform(128), size=128)


def test_same_seed_same_scenes_other_seed_or_split_differs() -> None:
    a, b = dataset(3), dataset(3)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert torch.equal(a[i]["target"]["boxes"], b[i]["target"]["boxes"])
        assert torch.equal(a[i]["target"]["labels"], b[i]["target"]["labels"])
    assert not torch.equal(a[0]["image"], dataset(4)[0]["image"])
    assert not torch.equal(a[0]["image"], dataset(3, split="val")[0]["image"])


def test_boxes_are_the_exact_extent_of_the_drawn_glyphs() -> None:
    ds = dataset(0, length=24)
    for i in range(len(ds)):
        scene = ds.render(i)
        assert 1 <= len(scene.labels) <= 4 and set(scene.labels.tolist()) <= set(range(len(CLASS_NAMES)))
        assert scene.image.shape == (128, 128) and scene.image.dtype == np.uint8
        assert (scene.boxes[:, :2] >= 0).all() and (scene.boxes[:, 2:] <= 128).all()
        for k, box in enumerate(scene.boxes.astype(int)):
            ys, xs = np.nonzero(scene.owner == k)
            assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
            if not (scene.owner[box[1]:box[3], box[0]:box[2]] > k).any():  # not overdrawn: tight on every side
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)


@pytest.mark.parametrize("label", range(10))
def test_every_digit_renders_at_about_the_asked_height(label: int) -> None:
    heights = [render_glyph(np.random.default_rng(seed), label, 30.0).shape[0] for seed in range(5)]
    assert all(18 <= h <= 42 for h in heights)


def test_datamodule_batches_follow_the_contract() -> None:
    data = GlyphsDetectionDataModule(num_train=8, num_val=4, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["images"].shape == (4, 3, 128, 128)
    assert torch.equal(batch["images"][:, 0], batch["images"][:, 1])  # grey in three equal channels
    assert data.num_classes == 10
    for target in batch["targets"]:
        assert target["labels"].max() < 10 and target["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="min_size"):
        GlyphsDetectionDataModule(min_size=0.5, max_size=0.2)


def test_crop_option_moves_and_rescales_boxes_inside_the_image_and_off_keeps_them() -> None:
    for crop in (False, True):
        data = GlyphsDetectionDataModule(num_train=16, num_val=4, crop=crop)
        data.setup("fit")
        torch.manual_seed(0)
        moved = 0
        for i in range(len(data.train_set)):
            boxes = data.train_set[i]["target"]["boxes"]
            scene = torch.from_numpy(data.train_set.render(i).boxes)
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all() and len(boxes) >= 1
            moved += boxes.shape != scene.shape or not torch.allclose(boxes, scene)
        assert (moved >= 4) if crop else (moved == 0)  # zoom-out p=0.3 and IoU crop p=0.5 per image
