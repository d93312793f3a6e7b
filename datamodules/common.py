"""Pieces every datamodule shares: reproducible loaders and clear errors for missing data."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation drawn from ``seed + epoch`` only.

    Lightning calls ``set_epoch`` at the start of every epoch, so the order of an
    epoch never depends on the global RNG: a run resumed from a checkpoint sees
    exactly the batches an uninterrupted run would. Under DDP Lightning swaps in
    its ``DistributedSampler``, which follows the same rule.
    """

    def __init__(self, data: Sized, seed: int = 0) -> None:
        self.size = len(data)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling is reproducible across resumes (see EpochSeededSampler)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def require_files(root: str | Path, expected: Iterable[str], layout: str) -> Path:
    """Fail fast, naming what is missing, when a local dataset root is incomplete.

    Args:
        root: the dataset root given in the config.
        expected: paths relative to ``root`` that must exist.
        layout: a short drawing of the expected on-disk layout for the message.
    """
    root = Path(root).expanduser()
    missing = [name for name in expected if not (root / name).exists()]
    if not root.is_dir() or missing:
        what = f"'{root}' does not exist" if not root.is_dir() else f"missing under '{root}': {', '.join(missing)}"
        raise FileNotFoundError(f"dataset root incomplete: {what}.\nExpected layout:\n{layout}\n"
                                "Nothing is downloaded: place the files there or set `data.root`.")
    return root
