"""Event data throughput: GEN1 ``.dat`` decoding and frame binning (events per second).

Writes a synthetic GEN1 recording (304x240, sorted timestamps over 60 s, uniform positions) to
a temporary ``.dat`` file (kept in the page cache: this measures decoding, not the disk), then
times, as the median of ``--repeats`` runs each:

- ``gen1_decode_events_per_s``: the whole file through :func:`datamodules.dat.read_events`
  (numpy memory map, vectorised unpacking; the reader GEN1 uses);
- ``expelliarmus_decode_events_per_s``: the same file through ``expelliarmus.Wizard(encoding="dat")``;
- ``gen1_window_samples_per_s``: GEN1 samples (250 ms window before a label: binary search,
  decode, bin into 5 frames) per second;
- ``bin_events_per_s``: :func:`datamodules.frames.bin_events` (one ``np.bincount``) on 1 M events;
- ``tonic_to_frame_events_per_s``: tonic ``ToFrame`` (through :class:`FixedFrames`) on the same events.

Usage: ``python benchmarks/events.py [--events 10000000] [--repeats 5] [--json]``; with ``--json``
the last stdout line is one JSON object.
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
from datamodules.dat import EVENT_DTYPE, read_events, write_dat  # noqa: E402
from datamodules.frames import FixedFrames, bin_events  # noqa: E402
from datamodules.gen1 import GEN1_SENSOR  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the synthetic recording")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    results = run(args.events, args.repeats)
    for key, value in results.items():
        print(f"{key:36s} {value:,.0f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
