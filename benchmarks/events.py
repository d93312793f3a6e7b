"""Event data throughput: GEN1 ``.dat`` decoding and frame binning (events per second).

Writes a synthetic GEN1 recording (304x240, sorted timestamps over 60 s, uniform positions) to
a temporary ``.dat`` file (kept in the page cache: this measures decoding, not the disk), then
times, as the median of ``--repeats`` runs each:

- ``gen1_decode_events_per_s``: the whole file through :func:`datamodules.events.dat.read_events`
  (numpy memory map, vectorised unpacking; the reader GEN1 uses);
- ``expelliarmus_decode_events_per_s``: the same file through ``expelliarmus.Wizard(encoding="dat")``;
- ``gen1_window_samples_per_s``: GEN1 samples (250 ms window before a label: binary search,
  decode, bin into 5 frames) per second;
- ``bin_events_per_s``: :func:`datamodules.events.frames.bin_events` (one ``np.bincount``) on 1 M events;
- ``tonic_to_frame_events_per_s``: tonic ``ToFrame`` (through :class:`FixedFrames`) on the same events.

With ``--add-task-memory`` it also trains the Add task (one recurrent LTC-SN layer of 128, batch
128, a few batches) at T = 100 and T = 1000, each (algorithm, T) in a fresh worker process, and
reports the peak memory training adds (``benchmarks/memory.py``'s meter: VmHWM after
``clear_refs`` over the RSS at the first batch): ``add_task_peak_bytes`` per algorithm and T, for
FPTT with K = T (one update per step), FPTT with K = 10 and BPTT.

Usage: ``python benchmarks/events.py [--events 10000000] [--repeats 5] [--add-task-memory] [--json]``;
with ``--json`` the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.events.dat import EVENT_DTYPE, read_events, write_dat  # noqa: E402
from datamodules.events.frames import FixedFrames, bin_events  # noqa: E402
from datamodules.events.gen1 import GEN1_SENSOR  # noqa: E402

DURATION_US = 60_000_000


def synthetic_events(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.empty(n, EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, DURATION_US, n))
    events["x"], events["y"] = rng.integers(0, 304, n), rng.integers(0, 240, n)
    events["p"] = rng.integers(0, 2, n)
    return events


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (page cache, imports)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(num_events: int, repeats: int) -> dict[str, float]:
    from expelliarmus import Wizard

    events = synthetic_events(num_events)
    results: dict[str, float] = {"events": num_events}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench_td.dat"
        write_dat(path, events)
        wizard = Wizard(encoding="dat")
        results["gen1_decode_events_per_s"] = num_events / median_seconds(lambda: read_events(path), repeats)
        results["expelliarmus_decode_events_per_s"] = num_events / median_seconds(lambda: wizard.read(path), repeats)
        labels = np.linspace(1_000_000, DURATION_US, 50).astype(np.int64)

        def windows() -> None:
            for t in labels:
                window = read_events(path, int(t) - 250_000, int(t))
                bin_events(window, GEN1_SENSOR, 5, int(t) - 250_000, int(t))
        results["gen1_window_samples_per_s"] = len(labels) / median_seconds(windows, repeats)
    chunk = events[:1_000_000]
    span = (int(chunk["t"][0]), int(chunk["t"][-1]) + 1)
    results["bin_events_per_s"] = len(chunk) / median_seconds(lambda: bin_events(chunk, GEN1_SENSOR, 10, *span),
                                                               repeats)
    framing = FixedFrames(GEN1_SENSOR, 10, n_time_bins=10)
    results["tonic_to_frame_events_per_s"] = len(chunk) / median_seconds(lambda: framing(chunk), repeats)
    return results


def add_task_worker(seq_len: int, algorithm: str, parts: int | None, batches: int = 3) -> int:
    """Peak bytes training ``batches`` Add-task batches adds (run in a fresh process)."""
    import importlib.util

    import lightning.pytorch as pl
    import torch

    from datamodules.sequences.add_task import AddTaskDataModule
    from spikeloc.training.loop import FPTTConfig
    from spikeloc.training.regression import SpikingRegressor

    spec = importlib.util.spec_from_file_location("memory_bench", Path(__file__).with_name("memory.py"))
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    torch.manual_seed(0)
    meter = memory.Meter("cpu")
    probe = memory._probe(meter)
    data = AddTaskDataModule(seq_len=seq_len, num_train=128 * batches, num_val=1, batch_size=128)
    module = SpikingRegressor(model_kwargs={"hidden": [128]}, algorithm=algorithm,
                              fptt=FPTTConfig(alpha=0.5, parts=parts, consolidate=False))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[probe])
    trainer.fit(module, datamodule=data)
    return int(probe.result)


def add_task_memory() -> dict[str, dict[str, int]]:
    """``{"fptt_k_eq_t": {"100": bytes, "1000": bytes}, "fptt_k10": {...}, "bptt": {...}}``."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
           "MALLOC_TRIM_THRESHOLD_": "131072"}
    out: dict[str, dict[str, int]] = {}
    for name, algorithm, parts in (("fptt_k_eq_t", "fptt", 0), ("fptt_k10", "fptt", 10), ("bptt", "bptt", 0)):
        for seq_len in (100, 1000):
            done = subprocess.run([sys.executable, __file__, "--worker-add-task", str(seq_len), algorithm, str(parts)],
                                  env=env, capture_output=True, text=True, check=True)
            out.setdefault(name, {})[str(seq_len)] = int(done.stdout.split()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the synthetic recording")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--add-task-memory", action="store_true", help="also measure Add-task training memory")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--worker-add-task", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_add_task:
        seq_len, algorithm, parts = args.worker_add_task
        print(add_task_worker(int(seq_len), algorithm, int(parts) or None))
        return
    results: dict = run(args.events, args.repeats)
    for key, value in results.items():
        print(f"{key:36s} {value:,.0f}")
    if args.add_task_memory:
        results["add_task_peak_bytes"] = add_task_memory()
        for name, by_length in results["add_task_peak_bytes"].items():
            print(f"add task {name:12s} " + "  ".join(f"T={t}: {v / 2 ** 20:.1f} MiB" for t, v in by_length.items()))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
