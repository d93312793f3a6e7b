"""Anchor fitting: k-means of box sizes under 1 - wh-IoU, and the advice a detector gets at fit start."""
import ast

import pytest
import torch

from spikeloc.models.detection import YOLOGeometry, best_anchor_iou, fit_anchors
from spikeloc.training.anchor_check import anchor_advice, datamodule_advice

SIZES = torch.tensor([[10.0, 20.0], [30.0, 30.0], [80.0, 50.0]])


def clusters(per: int = 40, spread: float = 0.05) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noise = 1 + spread * (2 * torch.rand(len(SIZES), per, 2, generator=generator) - 1)
    return (SIZES[:, None] * noise).reshape(-1, 2)


def test_best_anchor_iou_by_hand():
    anchors = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    wh = torch.tensor([[10.0, 10.0], [20.0, 10.0], [40.0, 40.0]])
    # (20, 10) overlaps (10, 10) in 100 of 200 and (20, 20) in 200 of 400; (40, 40) overlaps (20, 20) in 400 of 1600
    assert best_anchor_iou(wh, anchors).tolist() == pytest.approx([1.0, 0.5, 0.25])


def test_kmeans_finds_the_clusters_and_is_deterministic():
    wh = clusters()
    anchors = fit_anchors(wh, 3)
    torch.testing.assert_close(anchors, SIZES, rtol=0.03, atol=0)  # sorted by area, each a cluster's centre
    assert torch.equal(fit_anchors(wh[torch.randperm(len(wh))], 3), anchors)  # order of the boxes does not matter
    assert best_anchor_iou(wh, anchors).mean() > 0.9
    with pytest.raises(ValueError, match="2 boxes for 3 anchors"):
        fit_anchors(wh[:2], 3)


def test_advice_names_the_key_and_gives_anchors_that_fit():
    wh = clusters()
    wrong = YOLOGeometry.from_scales([[(200, 200), (250, 250)], [(300, 300), (400, 400)]], (16, 32))
    advice = anchor_advice(wh, wrong)
    assert advice.startswith("model.init_args.anchors: the anchors fit the training boxes poorly (mean best wh-IoU")
    suggested = ast.literal_eval(advice.split("anchors: ")[-1])  # the per-scale list, ready for the config
    assert [len(scale) for scale in suggested] == [2, 2]
    right = YOLOGeometry.from_scales([[tuple(a) for a in scale] for scale in suggested], (16, 32))
    assert anchor_advice(wh, right) is None
    assert best_anchor_iou(wh, torch.tensor(right.anchors)).mean() > 0.8


def test_no_advice_without_indexable_detection_samples():
    geometry = YOLOGeometry.from_scales([[(200, 200)], [(400, 400)]], (16, 32))

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])

    class Data:
        def __init__(self, dataset):
            self.dataset = dataset

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.dataset)

    assert datamodule_advice(object(), geometry) is None  # no training split
    assert datamodule_advice(Data(Stream()), geometry) is None  # not indexable
    assert datamodule_advice(Data([{"image": torch.zeros(3, 8, 8), "label": 1}] * 4), geometry) is None  # no boxes
    boxes = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 20.0]]), "labels": torch.tensor([0])}
    assert datamodule_advice(Data([{"image": torch.zeros(3, 8, 8), "target": boxes}] * 4), geometry) is not None
