"""GEN1 in sequential mode: batch b + 1 continues the recordings of batch b row by row, resets where a
recording starts, labels in the last frame of their window, epochs decided by seed + epoch and resumable."""
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.events.gen1 import GEN1DataModule, index_recordings
from datamodules.events.streams import slot_schedule
from tests.event_formats import random_events, write_dat, write_gen1_boxes

SPAN = 100_000  # T = 2 frames of 50 ms


def test_slot_schedule_by_hand():
    assert slot_schedule([3, 1, 2], 2) == [[(0, 0), (1, 0)], [(0, 1), (2, 0)], [(0, 2), (2, 1)]]
    assert slot_schedule([2, 0, 3], 2) == [[(0, 0), (2, 0)], [(0, 1), (2, 1)], [None, (2, 2)]]


def _write(folder: Path, name: str, seed: int, duration: int) -> None:
    write_dat(folder / f"{name}_td.dat", random_events(np.random.default_rng(seed), 4000, 304, 240, duration))
    rows = [(t, 20 + seed, 30, 40, 30, seed % 2, 1.0, 1) for t in range(600_000, duration + 1, SPAN)]
    rows.append((1_230_000, 100, 100, 40, 40, 1, 1.0, 2))  # 70 ms before its window's end: not in its last frame
    write_gen1_boxes(folder / f"{name}_bbox.npy", rows)


def write_root(folder: Path, evaluated: int = 2) -> Path:
    """Five training recordings of 1.3-2.2 s, ``evaluated`` of 1.4 s in val/ and test/; labels every 100 ms."""
    for split in ("train", "val", "test"):
        (folder / split).mkdir(parents=True)
    for k, duration in enumerate((2_000_000, 1_500_000, 1_800_000, 1_300_000, 2_200_000)):
        _write(folder / "train", f"r{k}", k, duration)
    for k in range(evaluated):
        _write(folder / "val", f"v{k}", k, 1_400_000)
        _write(folder / "test", f"t{k}", k, 1_400_000)
    return folder


@pytest.fixture
def root(tmp_path):
    return write_root(tmp_path)


def _data(root: Path, **kwargs) -> GEN1DataModule:
    data = GEN1DataModule(str(root), num_steps=2, window_us=50_000, image_size=64, clip_count=None, batch_size=2,
                          sequential=True, **kwargs)
    data.setup("fit")
    return data


def _where(target: dict) -> tuple[str, int]:
    stem, end = target["name"].split("@")
    return stem, int(end)


def test_windows_cover_each_recording_and_labels_sit_in_their_last_frame(root):
    recordings = index_recordings(root / "train", SPAN, 50_000)
    first = recordings[0]
    events_start = int(random_events(np.random.default_rng(0), 4000, 304, 240, 2_000_000)["t"][0])
    assert first.start == 600_000 - SPAN * ((600_000 - events_start) // SPAN) and first.start <= events_start + SPAN
    assert first.start + first.windows * SPAN >= 2_000_000 > first.start + (first.windows - 1) * SPAN
    ends = {first.start + (w + 1) * SPAN: w for w in range(first.windows)}
    assert sorted(first.labels) == [ends[t] for t in range(600_000, 2_000_001, SPAN)]  # not the one at 1.23 s
    assert all(first.labels[ends[t]].t == t for t in range(600_000, 2_000_001, SPAN))


def test_each_batch_continues_the_last_row_by_row(root):
    data = _data(root)
    dataset, loader = data.train_set, data.train_dataloader()
    starts = {Path(r.dat).stem: r.start for r in dataset.recordings}
    previous, seen = None, set()
    for batch in loader:
        assert batch["images"].shape == (2, 2, 2, 64, 64)
        for row, target in enumerate(batch["targets"]):
            stem, end = _where(target)
            if stem == "idle":
                assert batch["reset"][row] and not batch["labelled"][row]
                continue
            assert bool(batch["reset"][row]) == (end == starts[stem] + SPAN)  # reset exactly at a recording's start
            if not batch["reset"][row]:
                assert _where(previous[row]) == (stem, end - SPAN)  # the same recording, the next window
            assert bool(batch["labelled"][row]) == (600_000 <= end and end % SPAN == 0 and len(target["boxes"]) == 1)
            seen.add((stem, end))
        previous = batch["targets"]
    windows = sum(dataset.lengths)
    assert len(loader) == -(-windows // 2) and len(seen) >= windows - 2 * max(dataset.lengths)
    item = dataset[3]  # the frames are those of the window's events, as an independent sample's
    stem, end = _where(item["target"])
    torch.testing.assert_close(item["image"], dataset.windows.frames(str(root / "train" / f"{stem}.dat"), end)[0])


def _names(loader) -> list[list[str]]:
    return [[t["name"] for t in batch["targets"]] for batch in loader]


def test_epochs_are_decided_by_seed_and_epoch_and_resume_mid_epoch(root):
    loader, again = _data(root).train_dataloader(), _data(root).train_dataloader()
    epoch0 = _names(loader)
    assert _names(again) == epoch0
    loader.batch_sampler.sampler.set_epoch(1)  # what Lightning calls
    epoch1 = _names(loader)
    assert epoch1 != epoch0 and len(epoch1) == len(epoch0)
    loader.batch_sampler.sampler.set_epoch(0)
    loader.load_state_dict({"batches_served": 3})
    assert _names(loader) == epoch0[3:]


def test_evaluation_serves_every_window_once_in_order(root):
    data = _data(root)
    loader = data.val_dataloader()
    names = [n for batch in _names(loader) for n in batch if not n.startswith("idle")]
    expected = [f"{Path(r.dat).stem}@{r.start + (w + 1) * SPAN}" for r in data.val_set.recordings for w in
                range(r.windows)]
    assert sorted(names) == sorted(expected) and len(names) == len(expected)


def test_sequential_refuses_augmentation(root):
    with pytest.raises(ValueError, match="sequential: true .* hflip, zoom, translate and time_jitter"):
        GEN1DataModule(str(root), sequential=True, hflip=0.5)
