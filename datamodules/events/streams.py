"""Batches that continue recordings row by row: training and evaluating on consecutive windows with the
network state carried from one batch to the next (as recurrent event detectors such as RVT are trained).

Each recording is cut into consecutive windows; :func:`slot_schedule` gives every batch row one
recording from its first window to its last, then the next waiting recording (whose first window
resets the row's state). :class:`StreamBatches` turns that schedule into batches of dataset indices,
the recordings' order drawn from the sampler it holds (an ``EpochSeededSampler`` for training: seed
+ epoch decide the order, so an epoch is reproducible, and ``ResumableLoader`` resumes it mid-epoch).
Items of such a dataset carry ``reset`` (the window starts its recording, or the row is idle) and
``labelled`` (the window has a label to learn and score); :func:`collate_stream` stacks both into
bool ``[B]`` tensors next to the detection batch (``spikeloc.training.carry`` reads them).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, SequentialSampler

from datamodules.common import EpochSeededSampler, ResumableLoader, _CollateByValue
from datamodules.detection.base import collate_detection

Slot = tuple[int, int]  # (recording, window)


def slot_schedule(lengths: Sequence[int], slots: int) -> list[list[Slot | None]]:
    """Per batch, the ``(recording, window)`` each of ``slots`` rows holds (``None``: idle), for recordings of
    ``lengths`` windows taken in the order given; recordings without windows are left out."""
    pending = iter([r for r, n in enumerate(lengths) if n > 0])
    current = [next(pending, -1) for _ in range(slots)]
    position = [0] * slots
    batches = []
    while any(r >= 0 for r in current):
        batches.append([(r, position[row]) if r >= 0 else None for row, r in enumerate(current)])
        for row, r in enumerate(current):
            if r >= 0:
                position[row] += 1
                if position[row] == lengths[r]:
                    current[row], position[row] = next(pending, -1), 0
    return batches


class StreamBatches(Sampler[list[int]]):
    """Batches of dataset indices that continue the recordings row by row.

    Item ``offsets[r] + w`` is window ``w`` of recording ``r``; item ``idle`` (the number of windows) fills
    an idle row. The recordings' order is ``list(sampler)`` (Lightning calls ``set_epoch`` on a batch
    sampler's ``sampler``). With ``truncate`` every epoch has ``ceil(windows / batch_size)`` batches (the
    fewest that can hold them): the rows' last windows beyond that are left out of the epoch, which keeps
    the epoch's length fixed whatever the order (training); without, every window is served (evaluation).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, sampler: Sampler[int], truncate: bool) -> None:
        self.lengths, self.batch_size, self.sampler, self.truncate = list(lengths), batch_size, sampler, truncate
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(int)
        self.idle = int(self.offsets[-1])
        self._cached: tuple[int, list[list[int]]] | None = None

    def schedule(self) -> list[list[int]]:
        """This epoch's batches (computed once per epoch)."""
        epoch = getattr(self.sampler, "epoch", 0)
        if self._cached is None or self._cached[0] != epoch:
            order = list(self.sampler)
            rows = slot_schedule([self.lengths[r] for r in order], self.batch_size)
            batches = [[self.idle if s is None else int(self.offsets[order[s[0]]]) + s[1] for s in batch]
                       for batch in rows]
            self._cached = (epoch, batches[:len(self)] if self.truncate else batches)
        return self._cached[1]

    def __len__(self) -> int:
        return math.ceil(self.idle / self.batch_size) if self.truncate else len(self.schedule())

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.schedule())


def collate_stream(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`~datamodules.detection.base.collate_detection` plus ``reset`` and ``labelled``, bool ``[B]``."""
    batch = collate_detection(samples)
    batch["reset"] = torch.tensor([bool(s["reset"]) for s in samples])
    batch["labelled"] = torch.tensor([bool(s["labelled"]) for s in samples])
    return batch


def stream_loader(dataset: Dataset, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int,
                  num_workers: int) -> ResumableLoader:
    """A resumable loader of :class:`StreamBatches` (recordings shuffled by seed + epoch with ``shuffle``,
    epochs truncated to a fixed length; else in their order, every window served)."""
    recordings = list(range(len(lengths)))
    order = EpochSeededSampler(recordings, seed) if shuffle else SequentialSampler(recordings)
    return ResumableLoader(dataset, batch_sampler=StreamBatches(lengths, batch_size, order, truncate=shuffle),
                           num_workers=num_workers, collate_fn=_CollateByValue(collate_stream),
                           pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
