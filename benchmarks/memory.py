"""Peak training memory of one LTC-SN network under FPTT (K = T) and BPTT, over T (README "Measuring").

Every (algorithm, T) runs in a fresh worker process (this file with ``--worker``) that trains,
with a Lightning ``Trainer`` for a few batches of static synthetic frames, either a
``SpikingClassifier`` (``--model classifier``: ``ltc_convnet``) or the SPYv4 detector
(``--model detector``: ``SpikingDetector`` with ``spyv4_tiny`` at ``--width``, random boxes).
The baseline is taken at the first ``on_train_batch_start`` (model, data, optimizer and FPTT
state already built) and the peak at ``on_train_end`` (``common.Meter``):

- CPU: ``VmHWM - VmRSS(baseline)`` after resetting the peak with ``5 > /proc/self/clear_refs``
  (fallback: ``getrusage`` peak since process start, which cannot be reset);
- CUDA: ``max_memory_allocated - memory_allocated(baseline)`` after ``reset_peak_memory_stats``.

So the figure holds activations, gradients, Adam's state and per-step temporaries, not the
parameters or FPTT's running average / trace (built in ``on_fit_start``). Before measuring, each
worker runs a tiny warm-up fit so library code paged in on first use (file-backed RSS) is not
counted, and runs under glibc settings that make freed tensors leave the RSS (``WORKER_ENV``).

Usage::

    python benchmarks/memory.py [--steps 4 8 16 32 64] [--batch-size 8] [--image-size 128]
                                [--repeats 1] [--device cpu|cuda] [--json] [--plot mem.png]
    python benchmarks/memory.py --model detector   # defaults: T 4 8 16, batch 2, 128x128, width 0.25

With ``--json`` the last stdout line is ``{"fptt": {"T": bytes, ...}, "bptt": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import common

ALGORITHMS = ("fptt", "bptt")
MIB = common.MIB
DETECTOR_DEFAULTS = {"steps": [4, 8, 16], "batch_size": 2}


def _fit(algorithm: str, num_steps: int, size: int, batch_size: int, batches: int, args: argparse.Namespace,
         callbacks: list[Any]) -> Any:
    """Train a fresh model of ``args.model`` for ``batches`` batches of static ``[B, 3, size, size]`` frames."""
    import torch
    torch.manual_seed(0)
    if args.model == "detector":
        module = common.make_detector(algorithm, num_steps, size, args.width)
        loader = common.detection_loader(batches, batch_size, size)
    else:
        module = common.make_classifier(algorithm, num_steps, list(args.channels))
        loader = common.classification_loader(batches, batch_size, size)
    common.make_trainer(args.device, batches, callbacks).fit(module, train_dataloaders=loader)
    return module


def measure(algorithm: str, num_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak bytes that training ``args.batches`` batches with ``algorithm`` over ``num_steps`` adds.

    A tiny warm-up fit first pages in the library code training touches (file-backed RSS),
    so the measured peak is the training's own memory, not a one-off code load.
    """
    import torch
    torch.set_num_threads(args.threads)
    if args.warmup:
        _fit(algorithm, 2, 32 if args.model == "detector" else 16, 2, 1, args, [])
    meter = common.Meter(args.device)
    probe = common.memory_probe(meter)
    module = _fit(algorithm, num_steps, args.image_size, args.batch_size, args.batches, args, [probe])
    if probe.result is None:
        raise RuntimeError("training ended before the memory probe saw a batch")
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return {"peak": int(probe.result), "baseline": int(meter.base), "params": params, "method": meter.method}


# ---- driving (parent side) ---------------------------------------------------------------
def run_worker(algorithm: str, num_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its last stdout line is the result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", algorithm, "--steps", str(num_steps),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--batches", str(args.batches), "--threads", str(args.threads), "--device", args.device,
               "--model", args.model, "--width", str(args.width),
               *([] if args.warmup else ["--no-warmup"]),
               "--channels", *map(str, args.channels)]
    env = {**os.environ, **common.WORKER_ENV, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=args.root)
    if done.returncode != 0:
        raise RuntimeError(f"worker {algorithm} T={num_steps} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_table(args: argparse.Namespace) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """Median peak bytes per algorithm and T (``{"fptt": {"4": b, ...}, "bptt": ...}``) and run info."""
    table: dict[str, dict[str, int]] = {name: {} for name in ALGORITHMS}
    info: dict[str, Any] = {}
    for num_steps in args.steps:
        for algorithm in ALGORITHMS:
            runs = [run_worker(algorithm, num_steps, args) for _ in range(args.repeats)]
            table[algorithm][str(num_steps)] = int(statistics.median(r["peak"] for r in runs))
            info = {"method": runs[0]["method"], "params": runs[0]["params"], "baseline": runs[0]["baseline"]}
            if not args.json:
                print(f"  measured {algorithm} T={num_steps}: "
                      f"{table[algorithm][str(num_steps)] / MIB:.1f} MiB", file=sys.stderr, flush=True)
    return table, info


def report(table: dict[str, dict[str, int]], info: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the readable table: T, FPTT MiB, BPTT MiB, BPTT/FPTT, and FPTT's growth over T."""
    model = (f"SPYv4 detector width={args.width}" if args.model == "detector"
             else f"ltc_convnet channels={list(args.channels)}")
    print(f"Peak training memory over the baseline ({args.device}, {info['method']}; median of "
          f"{args.repeats}); {model}, batch={args.batch_size}, "
          f"frames 3x{args.image_size}x{args.image_size}, {args.batches} batches, "
          f"params {info['params'] / MIB:.2f} MiB, footprint at the baseline {info['baseline'] / MIB:.0f} MiB")
    print(f"{'T':>4} {'FPTT MiB':>10} {'BPTT MiB':>10} {'BPTT/FPTT':>10}")
    for num_steps in args.steps:
        fptt, bptt = table["fptt"][str(num_steps)], table["bptt"][str(num_steps)]
        print(f"{num_steps:>4} {fptt / MIB:>10.1f} {bptt / MIB:>10.1f} {bptt / max(fptt, 1):>10.2f}")
    first, last = str(args.steps[0]), str(args.steps[-1])
    growth = table["fptt"][last] / max(table["fptt"][first], 1)
    print(f"FPTT T={last} / T={first}: {growth:.2f}x   "
          f"BPTT T={last} / T={first}: {table['bptt'][last] / max(table['bptt'][first], 1):.2f}x   "
          f"FPTT T={last} / BPTT T={first}: {table['fptt'][last] / max(table['bptt'][first], 1):.2f}x")


def plot(table: dict[str, dict[str, int]], steps: list[int], path: str) -> None:
    """Save a PNG of peak MiB against T for both algorithms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for algorithm in ALGORITHMS:
        axes.plot(steps, [table[algorithm][str(t)] / MIB for t in steps], marker="o", label=algorithm.upper())
    axes.set_xscale("log", base=2)
    axes.set_xticks(steps, [str(t) for t in steps])
    axes.set(xlabel="time steps T", ylabel="peak training memory (MiB)", title="FPTT (K = T) vs BPTT")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; ``--worker ALGO`` (internal) measures one algorithm at ``--steps T``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["classifier", "detector"], default="classifier")
    parser.add_argument("--width", type=float, default=0.25, help="detector channel width (1: the paper's)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="values of T (4 8 16 32 64; detector 4 8 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="8 (detector: 2)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the square static frames")
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32], help="ltc_convnet cells")
    parser.add_argument("--batches", type=int, default=3, help="training batches per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per cell (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the workers")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the tiny warm-up fit that pages in library code before the baseline")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    parser.add_argument("--plot", metavar="PATH", help="save a PNG of memory against T")
    parser.add_argument("--worker", choices=ALGORITHMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    detector = args.model == "detector"
    args.steps = args.steps or (DETECTOR_DEFAULTS["steps"] if detector else [4, 8, 16, 32, 64])
    args.batch_size = args.batch_size or (DETECTOR_DEFAULTS["batch_size"] if detector else 8)
    args.root = str(common.ROOT)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        with common.quiet():
            print(json.dumps(measure(args.worker, args.steps[0], args)))
        return
    table, info = run_table(args)
    if args.plot:
        plot(table, args.steps, args.plot)
    if args.json:
        print(json.dumps(table))
    else:
        report(table, info, args)


if __name__ == "__main__":
    main()
