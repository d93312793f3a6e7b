"""Pieces every datamodule shares: reproducible loaders and clear errors for missing data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sized

import numpy as np
import torch
from lightning_utilities import apply_to_collection
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

BY_VALUE_BYTES = 65536  # tensors up to this size leave a loader worker inside the pickle, not via shared memory


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


class ResumableLoader(DataLoader):
    """A DataLoader that can resume in the middle of an epoch (Lightning's stateful-loader protocol:
    ``state_dict`` / ``load_state_dict``).

    ``state_dict()`` holds how many batches of the current epoch were handed out; Lightning stores it in
    every checkpoint and, on resume, calls ``load_state_dict`` before the first ``iter()``. That pass then
    runs a one-off loader (same dataset, workers and collate) over the epoch's remaining batches of
    indices, so nothing is loaded for the batches already served. The order of an epoch comes from the
    sampler (:class:`EpochSeededSampler`, or Lightning's ``DistributedSampler``), so the remaining batches
    are those an uninterrupted run would see. The inner iterator is created at the first ``next()``, after
    Lightning's ``set_epoch``, with worker seeds drawn from ``(seed, epoch)`` instead of the global RNG. A
    dataset's ``skips`` (:class:`~datamodules.detection.validation.DecodeSkips`) counts the samples skipped at decode
    time, here in the main process, and reports them when a pass ends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0

    def __iter__(self) -> Iterator:
        return self._batches()

    def _rest(self, skip: int) -> DataLoader:
        """A loader like this one over the current epoch's batches of indices after the first ``skip``."""
        workers = {"prefetch_factor": self.prefetch_factor, "timeout": self.timeout,
                   "multiprocessing_context": self.multiprocessing_context} if self.num_workers else {}
        return DataLoader(self.dataset, batch_sampler=list(self.batch_sampler)[skip:], num_workers=self.num_workers,
                          collate_fn=self.collate_fn, pin_memory=self.pin_memory, worker_init_fn=self.worker_init_fn,
                          generator=self.generator, **workers)

    def _batches(self) -> Iterator:
        skip = self._skip if self._skip < len(self) else 0  # a finished epoch resumes at the next one
        self._skip, self._served = 0, skip
        # the iterator draws its workers' base seed from this generator, not from the global RNG, and
        # from (seed, epoch) only; it is not kept (a torch.Generator attribute breaks ddp_spawn's pickling)
        seed = getattr(self.sampler, "seed", 0) + getattr(self.sampler, "epoch", 0)
        self.generator = torch.Generator().manual_seed(seed)
        inner = iter(self._rest(skip)) if skip else super().__iter__()  # built now, its base seed drawn
        self.generator = None
        skips = getattr(self.dataset, "skips", None)  # samples skipped at decode time, counted here
        try:
            for batch in inner:
                self._served += 1
                batch = apply_to_collection(batch, _PickledTensor, _PickledTensor.restore) if self.num_workers \
                    else batch
                if skips is not None:
                    skips.take(batch)
                yield batch
        finally:
            if skips is not None:
                skips.end_of_pass()

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state.get("batches_served", 0))


class _PickledTensor:
    """A small tensor sent from a loader worker by value: its bytes, dtype and shape.

    A tensor leaves a worker through shared memory, one file descriptor each, and receiving each one
    costs the main process a file-descriptor exchange; a detection batch carries dozens of small target
    tensors, which pickled by value cost a fraction of that (benchmarks/RESULTS.md, "Data loading").
    Only plain tensors of at most ``BY_VALUE_BYTES`` are sent this way; images still go through shared
    memory.
    """

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, tensor: torch.Tensor) -> None:
        flat = tensor.detach().contiguous().reshape(-1)
        # an empty tensor may have stride 0 (from numpy), which ``view`` refuses: no bytes to send anyway
        self.data = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)
        self.dtype, self.shape = tensor.dtype, tensor.shape

    @staticmethod
    def wrap(value: Any) -> Any:
        small = type(value) is torch.Tensor and value.numel() * value.element_size() <= BY_VALUE_BYTES
        return _PickledTensor(value) if small else value

    @staticmethod
    def restore(value: Any) -> Any:
        if not isinstance(value, _PickledTensor):
            return value
        data = torch.from_numpy(value.data) if value.data.size else torch.empty(0, dtype=torch.uint8)  # not 0-strided
        return data.view(value.dtype).reshape(value.shape)


class _CollateByValue:
    """``collate`` whose small tensors travel by value when it runs in a loader worker (see :class:`_PickledTensor`)."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, samples: list) -> Any:
        batch = self.collate(samples)
        return batch if get_worker_info() is None else apply_to_collection(batch, torch.Tensor, _PickledTensor.wrap)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader whose shuffling is reproducible, that resumes mid-epoch (see :class:`ResumableLoader`) and
    whose workers send small tensors by value (:class:`_PickledTensor`)."""
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(dataset, seed) if shuffle else None,
        num_workers=num_workers,
        collate_fn=_CollateByValue(collate_fn or default_collate),
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class SplitLoaders:
    """A datamodule's ``train/val/test/predict_dataloader`` from one method, :meth:`split_dataset`:
    the training split shuffled by an :class:`EpochSeededSampler`, every loader resumable mid-epoch
    (:func:`make_loader`). Mix in before ``LightningDataModule``; reads ``batch_size``,
    ``num_workers``, ``seed`` and ``collate_fn`` (``None``: torch's default)."""

    collate_fn: Callable | None = None

    def split_dataset(self, split: str) -> Dataset | None:
        """The dataset of ``split`` (``train``, ``val`` or ``test``; ``None``: not set up)."""
        raise NotImplementedError

    def split_loader(self, split: str) -> DataLoader:
        dataset, name = self.split_dataset(split), type(self).__name__
        if dataset is None:
            raise RuntimeError(f"{name}: the {split} split is not set up; call setup() first")
        if len(dataset) == 0:
            raise ValueError(f"{name}: the {split} split is empty; check the data root and the {split} "
                             "split's settings in data.init_args")
        return make_loader(dataset, self.batch_size, shuffle=split == "train", seed=self.seed,
                           num_workers=self.num_workers, collate_fn=self.collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self.split_loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.split_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.split_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.split_loader("test")


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
