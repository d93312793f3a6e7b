"""Procedural classification data: determinism, balance, the batch contract and the motion labels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from datamodules.classification.procedural import (DIRECTION_NAMES, SHAPE_NAMES, MovingShapesClassificationDataModule,
                                    ShapesClassificationDataModule, generate_moving_shapes, render_shapes)

SMALL = dict(num_train=120, num_val=40, num_test=30, batch_size=16)


@pytest.mark.parametrize("cls", [ShapesClassificationDataModule, MovingShapesClassificationDataModule])
def test_same_seed_same_tensors_other_seed_differs(cls: type) -> None:
    a, b, c = cls(seed=3, **SMALL), cls(seed=3, **SMALL), cls(seed=4, **SMALL)
    for dm in (a, b, c):
        dm.setup("fit")
    for split in ("train", "val"):
        assert torch.equal(a.split(split).x, b.split(split).x)
        assert torch.equal(a.split(split).y, b.split(split).y)
        assert not torch.equal(a.split(split).x, c.split(split).x)
    assert not torch.equal(a.split("train").x[:40], a.split("val").x)  # splits are distinct draws
    bigger = cls(seed=3, **{**SMALL, "num_train": 160})  # a split does not depend on another's size
    assert torch.equal(bigger.split("val").x, a.split("val").x)


@pytest.mark.parametrize("cls", [ShapesClassificationDataModule, MovingShapesClassificationDataModule])
def test_labels_balanced(cls: type) -> None:
    dm = cls(**SMALL)
    counts = torch.bincount(dm.split("train").y, minlength=dm.num_classes)
    assert len(counts) == dm.num_classes and counts.max() - counts.min() <= 1


def test_static_batch_contract() -> None:
    dm = ShapesClassificationDataModule(image_size=24, **SMALL)
    assert (dm.num_classes, dm.in_channels, dm.class_names) == (10, 1, SHAPE_NAMES)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 24, 24) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 30


def test_moving_batch_contract() -> None:
    dm = MovingShapesClassificationDataModule(num_steps=6, **SMALL)
    assert (dm.num_classes, dm.in_channels, dm.class_names) == (8, 2, DIRECTION_NAMES)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 6, 2, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and set(x.unique().tolist()) <= {0.0, 1.0}


def test_train_order_reproducible_per_epoch() -> None:
    def first_labels(epoch: int) -> torch.Tensor:
        loader = ShapesClassificationDataModule(seed=1, **SMALL).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


def test_every_shape_renders_inside_its_radius() -> None:
    n = len(SHAPE_NAMES)
    masks = render_shapes(torch.arange(n), torch.full((n,), 16.0), torch.full((n,), 16.0),
                          torch.full((n,), 8.0), torch.zeros(n), 32)
    assert masks.shape == (n, 32, 32)
    area = masks.sum((1, 2))
    assert (area > 20).all()  # every class draws something
    assert masks[:, :4].sum() == 0 and masks[:, :, 28:].sum() == 0  # nothing beyond ~1.2 radius
    flat = masks.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1e9).min() > 2.0  # classes differ visibly


def test_motion_of_on_events_follows_the_label() -> None:
    steps = 8
    events, labels = generate_moving_shapes(160, 32, steps, 0.0, np.random.default_rng(7))
    on = events[:, :, 0].float()  # [N, T, H, W]
    mass = on.sum((2, 3))
    assert (mass > 0).all()  # every step of every sequence has ON events
    grid = torch.arange(32.0)
    cx = (on.sum(2) * grid).sum(2) / mass  # [N, T] centre of mass of ON events
    cy = (on.sum(3) * grid).sum(2) / mass
    dx, dy = cx[:, -1] - cx[:, 0], cy[:, 0] - cy[:, -1]  # image y grows downward: north is -y
    heading = torch.atan2(dy, dx)
    target = labels.float() * math.pi / 4
    error = torch.remainder(heading - target + math.pi, 2 * math.pi) - math.pi
    assert error.abs().max() < math.radians(30)
    assert (torch.hypot(dx, dy) > 3.0).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_train"):
        ShapesClassificationDataModule(num_train=0)
    with pytest.raises(ValueError, match="num_steps"):
        MovingShapesClassificationDataModule(num_steps=1)


def test_signature_parses_from_config() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(MovingShapesClassificationDataModule, "data")
    cfg = parser.parse_args(["--data.num_steps=12", "--data.seed=5"])
    assert (cfg.data.num_steps, cfg.data.seed, cfg.data.batch_size) == (12, 5, 64)
