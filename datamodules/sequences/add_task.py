"""The Add task (Hochreiter & Schmidhuber 1997), embedded and seeded, of any sequence length.

Each sequence has ``T`` steps of 2 inputs: a value drawn uniformly from [0, 1) and a marker
that is 1 at exactly two steps, one in each half of the sequence, 0 elsewhere. The answer is
the sum of the two marked values. As in the FPTT reference code, the target at every step is
the running sum of the values marked so far (its last step is the classic answer), so every
step carries a loss. Always predicting 1 scores a mean squared error of 1/6 ~ 0.167 at the end.

Batches: ``(x [B, T, 2] float32, y [B, T] float32)``.
"""
from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import TensorDataset

from datamodules.common import SplitLoaders


def generate_add_task(n: int, length: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``n`` sequences: inputs ``[n, length, 2]`` (value, marker) and running-sum targets ``[n, length]``."""
    if length < 2:
        raise ValueError(f"Add task: sequence length must be >= 2, got {length}")
    values = rng.random((n, length))
    half = length // 2
    first, second = rng.integers(0, half, n), rng.integers(half, length, n)
    markers = np.zeros((n, length))
    markers[np.arange(n), first] = markers[np.arange(n), second] = 1.0
    targets = np.cumsum(values * markers, axis=1)
    x = torch.from_numpy(np.stack([values, markers], axis=2).astype(np.float32))
    return x, torch.from_numpy(targets.astype(np.float32))


class AddTaskDataModule(SplitLoaders, LightningDataModule):
    """Procedural Add task splits, each drawn from ``numpy.random.default_rng([seed, split])``.

    Attributes for the CLI: ``in_channels = 2`` inputs per step, ``num_classes = 1`` output.
    """

    in_channels = 2
    num_classes = 1
    _split_ids = {"train": 0, "val": 1, "test": 2}

    def __init__(self, seq_len: int = 200, num_train: int = 10_000, num_val: int = 1_000, num_test: int = 1_000,
                 batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                           ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"AddTaskDataModule: {key} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.seq_len, self.num_steps = seq_len, seq_len
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, TensorDataset] = {}

    def split(self, name: str) -> TensorDataset:
        if name not in self.datasets:
            rng = np.random.default_rng([self.seed, self._split_ids[name]])
            self.datasets[name] = TensorDataset(*generate_add_task(self.sizes[name], self.seq_len, rng))
        return self.datasets[name]

    def split_dataset(self, split: str) -> TensorDataset:
        return self.split(split)
