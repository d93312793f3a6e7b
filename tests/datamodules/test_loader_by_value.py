"""Loader workers send small tensors by value (README "Speed"): the batches are the same as in-process."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate

import datamodules.common as common
from datamodules.common import make_loader
from datamodules.detection.glyphs import GlyphsDetectionDataModule

CASES = [torch.tensor(3.5), torch.zeros(0, 4), torch.arange(6).reshape(2, 3), torch.tensor([True, False]),
         torch.randn(3, 2).to(torch.bfloat16), torch.randn(4, 5)[:, ::2],  # 0-dim, empty, long, bool, bf16, strided
         torch.from_numpy(np.zeros(0, np.int64))]  # empty with stride 0: the labels of an image without objects


def test_small_tensors_round_trip_exactly_and_large_or_subclassed_ones_are_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(common, "get_worker_info", lambda: object())  # as inside a worker
    collate = common._CollateByValue(lambda samples: samples[0])
    large = torch.zeros(common.BY_VALUE_BYTES // 4 + 1)
    subclass = torch.nn.Parameter(torch.ones(2))
    sent = collate([{"small": CASES, "large": large, "param": subclass, "meta": (1, "a")}])
    assert all(isinstance(x, common._PickledTensor) for x in sent["small"])
    assert sent["large"] is large and sent["param"] is subclass and sent["meta"] == (1, "a")
    for before, x in zip(CASES, sent["small"]):
        after = common._PickledTensor.restore(x)
        assert after.dtype == before.dtype and after.shape == before.shape and torch.equal(after, before)


def test_in_process_collate_is_unchanged() -> None:
    batch = common._CollateByValue(default_collate)([torch.ones(2), torch.zeros(2)])
    assert type(batch) is torch.Tensor and torch.equal(batch, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_a_worker_loader_yields_the_same_detection_batches_as_the_main_process() -> None:
    data = GlyphsDetectionDataModule(num_train=8, num_val=4, batch_size=4, augment=False)
    data.setup("fit")
    batches = [list(make_loader(data.train_set, 4, shuffle=True, num_workers=workers, collate_fn=data.collate_fn))
               for workers in (0, 1)]
    for a, b in zip(*batches):
        assert torch.equal(a["images"], b["images"])
        for ta, tb in zip(a["targets"], b["targets"]):
            assert ta.keys() == tb.keys()
            for key in ta:
                same = torch.equal(ta[key], tb[key]) if torch.is_tensor(ta[key]) else ta[key] == tb[key]
                assert same and type(ta[key]) is type(tb[key]), key
