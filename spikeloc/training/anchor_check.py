"""Do a detector's anchors fit its training boxes? Checked once when training starts (docs/data.md)."""
from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from spikeloc.models.detection import YOLOGeometry, best_anchor_iou, fit_anchors
from .callbacks import rng_states_kept

POOR_FIT = 0.5  # mean best wh-IoU below which the anchors are called a poor fit
WORTH_CHANGING = 0.1  # ... when k-means anchors fit at least this much better


def training_box_sizes(dataset: Sequence, samples: int = 256) -> Tensor | None:
    """Sizes ``[N, 2]`` (input pixels) of the boxes of up to ``samples`` evenly spaced training samples,
    as training sees them (augmented), drawn without moving the random streams training uses. None
    when the samples are not ``{"image", "target": {"boxes"}}`` (event sequences, classification)."""
    count = len(dataset)
    if count == 0:
        return None
    indices = sorted(set(torch.linspace(0, count - 1, min(samples, count)).long().tolist()))
    with rng_states_kept():
        first = dataset[indices[0]]
        if not (isinstance(first, dict) and isinstance(first.get("target"), dict) and "boxes" in first["target"]):
            return None
        boxes = [first["target"]["boxes"]] + [dataset[i]["target"]["boxes"] for i in indices[1:]]
    boxes = torch.cat([b.reshape(-1, 4).float() for b in boxes])
    return boxes[:, 2:] - boxes[:, :2]


def anchor_advice(wh: Tensor, geometry: YOLOGeometry, key: str = "model.init_args.anchors") -> str | None:
    """A warning when the anchors the scales use fit the boxes ``wh`` poorly and k-means anchors (as many
    per scale as the masks have) would fit clearly better; None when they fit."""
    used = sorted({i for mask in geometry.masks for i in mask})
    anchors = torch.tensor([geometry.anchors[i] for i in used])
    per_scale = [len(mask) for mask in geometry.masks]
    if len(wh) < sum(per_scale):
        return None
    fit = float(best_anchor_iou(wh, anchors).mean())
    fitted = fit_anchors(wh, sum(per_scale))
    better = float(best_anchor_iou(wh, fitted).mean())
    if fit >= POOR_FIT or better - fit < WORTH_CHANGING:
        return None
    groups, start = [], 0
    for size in per_scale:  # the smallest anchors to the finest scale
        groups.append([[round(float(w)), round(float(h))] for w, h in fitted[start:start + size]])
        start += size
    return (f"{key}: the anchors fit the training boxes poorly (mean best wh-IoU {fit:.2f} over {len(wh)} boxes; "
            f"0.5 or more is a good fit); k-means anchors fit {better:.2f}: anchors: {groups}")


def datamodule_advice(datamodule: Any, geometry: YOLOGeometry) -> str | None:
    """:func:`anchor_advice` for the training split of ``datamodule``; None when it has no indexable
    training set of detection samples."""
    loader = datamodule.train_dataloader() if hasattr(datamodule, "train_dataloader") else None
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, Sized) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    sizes = training_box_sizes(dataset)
    return anchor_advice(sizes, geometry) if sizes is not None else None
