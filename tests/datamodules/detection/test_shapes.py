"""The embedded procedural shapes dataset: determinism, exact boxes, speed and the batch contract."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from datamodules.detection.shapes import CLASS_NAMES, ShapesDataset, ShapesDetectionDataModule, render_scene
from datamodules.detection.transforms import eval_transform


def dataset(seed: int, split: str = "train", size: int = 128, length: int = 12) -> ShapesDataset:
    return ShapesDataset(length, split, seed, eval_transform(size), size=size, max_objects=4)


def test_same_seed_same_images_and_boxes_different_seed_differs() -> None:
    a, b, c = dataset(3), dataset(3), dataset(4)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"])
        assert torch.equal(sa["target"]["boxes"], sb["target"]["boxes"])
        assert torch.equal(sa["target"]["labels"], sb["target"]["labels"])
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], dataset(3, split="val")[0]["image"])  # splits are distinct


def test_boxes_tightly_bound_drawn_pixels() -> None:
    ds = dataset(0)
    for i in range(len(ds)):
        scene = ds.render(i)
        assert 1 <= len(scene.labels) <= 4 and set(scene.labels.tolist()) <= set(range(len(CLASS_NAMES)))
        for k, box in enumerate(scene.boxes.astype(int)):
            ys, xs = np.nonzero(scene.owner == k)
            assert len(xs) > 0.2 * (box[2] - box[0]) * (box[3] - box[1])  # never mostly hidden
            assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
            if not (scene.owner[box[1]:box[3], box[0]:box[2]] > k).any():  # not occluded: tight on all sides
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)
            pixels = scene.image[ys, xs].astype(float)  # visible pixels carry the shape's colour (+ noise)
            assert np.abs(pixels.mean(0) - scene.colors[k]).max() < 6
            assert min(box[2] - box[0], box[3] - box[1]) >= 128 * 0.125 - 1  # not tiny: >= min_size of the side


def test_render_is_fast() -> None:
    rngs = [np.random.default_rng([0, 0, i]) for i in range(40)]
    render_scene(rngs[0])
    start = time.perf_counter()
    for rng in rngs[1:]:
        render_scene(rng, size=128)
    per_image = (time.perf_counter() - start) / 39
    assert per_image < 0.02, f"{per_image * 1e3:.1f} ms per 128x128 image"  # ~2.5 ms; loose for shared CPUs


def test_datamodule_batches_follow_contract() -> None:
    dm = ShapesDetectionDataModule(num_train=10, num_val=6, image_size=96, batch_size=4, seed=1)
    assert dm.num_classes == len(CLASS_NAMES) == len(dm.class_names) and dm.image_size == 96
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (4, 3, 96, 96) and batch["images"].dtype == torch.float32
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    seen = []
    for batch in dm.val_dataloader():
        for target in batch["targets"]:
            assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.long
            assert target["orig_size"] == (96, 96) and not target["difficult"].any()
            pad = torch.tensor(target["pad"] * 2)
            assert torch.allclose(target["orig_boxes"] * target["scale"] + pad, target["boxes"], atol=1e-4)
            seen.append(target["image_id"])
    assert sorted(seen) == list(range(1, 7))
    dm.setup("test")
    assert dm.test_set is dm.val_set and len(dm.test_dataloader()) == 2


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="min_size"):
        ShapesDetectionDataModule(min_size=0.5, max_size=0.2)
