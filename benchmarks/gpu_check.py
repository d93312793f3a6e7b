"""The checks that need a GPU, in one command (``make gpu-check``); never run by CI.

1. the CUDA tests (``pytest -m cuda``: every neuron backend that runs on CUDA, ``eager``, ``fused`` and
   ``compiled``, against the eager reference; FPTT's update; the detector trained with each backend; the
   loss without host syncs);
2. the detection quick start (``configs/quickstart_detect.yaml``) on ``cuda``, cut to ``--batches``
   training batches over ``--epochs`` epochs (the first of them as the ANN twin), with its mAP and time;
3. the training-speed benchmark (``benchmarks/train_speed.py``) on ``cuda`` for each of those backends,
   FPTT and BPTT.

Each step runs as its own process with a time limit, so none can hang the check; one that fails is
recorded and the next still runs. Everything goes to ``runs/gpu_check/results.json`` (device, versions,
each step's command, exit status, seconds, output tail and figures), printed as a summary at the end.
Without a CUDA GPU it stops at once with exit status 2 and writes nothing.

Usage::

    python benchmarks/gpu_check.py [--batches 300] [--epochs 3] [--out runs/gpu_check]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("default", "fused", "compiled")  # train_speed's options: default runs every neuron eager
NO_GPU = 2


def run_step(name: str, command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command`` from the repository root within ``timeout`` seconds: its status, time and output tail."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        status, output = "timeout", f"stopped after {timeout:.0f} s\n{stopped.stdout or ''}{stopped.stderr or ''}"
    seconds = round(time.monotonic() - start, 1)
    print(f"-> {name}: {'ok' if status == 0 else f'FAILED ({status})'} in {seconds} s", flush=True)
    return {"command": command, "status": status, "seconds": seconds, "tail": output[-4000:]}


def metrics(output: str) -> dict[str, float]:
    """The ``  name: value`` lines ``tools/train.py`` prints at the end of a run."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^  (\S+): (-?[\d.]+(?:e-?\d+)?)$", output, re.M)}


def quickstart(args: argparse.Namespace) -> dict[str, Any]:
    per_epoch = max(1, args.batches // args.epochs)
    step = run_step("detection quick start", [
        sys.executable, "tools/train.py", "--config", "configs/quickstart_detect.yaml",
        "--trainer.accelerator", args.device, "--trainer.max_epochs", str(args.epochs),
        "--trainer.limit_train_batches", str(per_epoch), "--trainer.limit_val_batches", "8",
        "--model.init_args.twin_fraction", str(round(1 / args.epochs, 4)),
        "--trainer.logger.init_args.save_dir", str(args.out)], args.timeout)
    found = metrics(step["tail"])
    step.update(batches=per_epoch * args.epochs, map_50=found.get("val/map_50"), metrics=found)
    return step


def speed(args: argparse.Namespace) -> dict[str, Any]:
    step = run_step("training speed", [
        sys.executable, "benchmarks/train_speed.py", "--device", args.device, "--sizes", "small", "full",
        "--algorithms", "fptt", "bptt", "--steps", "8", "--options", *BACKENDS, "--options-steps", "8",
        "--batches", "5", "--loader-batches", "0", "--json"], args.timeout)
    lines = step["tail"].strip().splitlines()
    try:
        step["result"] = json.loads(lines[-1]) if step["status"] == 0 and lines else None
    except json.JSONDecodeError:
        step["result"] = None
    return step


def environment(device: str) -> dict[str, Any]:
    import torch
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def summary(results: dict[str, Any]) -> str:
    lines = [f"\ngpu-check on {results['device']} (torch {results['torch']}, CUDA {results['cuda']})"]
    for name in ("tests", "quickstart", "speed"):
        step = results[name]
        lines.append(f"  {name:<11s}{'ok' if step['status'] == 0 else 'FAILED (' + str(step['status']) + ')'}"
                     f", {step['seconds']} s")
    start = results["quickstart"]
    if start.get("map_50") is not None:
        lines.append(f"  quick start: mAP@0.5 {start['map_50']:.4f} after {start['batches']} batches in "
                     f"{start['seconds']} s")
    for row in (results["speed"].get("result") or {}).get("runs", []):
        lines.append(f"  speed {row['size']:<6s}{row['algorithm']} T={row['T']} {row['option']:<9s}"
                     f"{row['batch_s']:.4f} s/batch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300, help="quick-start training batches, all epochs")
    parser.add_argument("--epochs", type=int, default=3, help="quick-start epochs (the first as the ANN twin)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each step may take")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)  # cpu: tests
    args = parser.parse_args(argv)
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
              "torch.cuda.is_available() is False): nothing was run. Run it on a machine with an NVIDIA GPU "
              "and a CUDA build of torch.", file=sys.stderr)
        return NO_GPU
    results = environment(args.device)
    marker = ["-m", "cuda"] if args.device == "cuda" else ["-m", "cuda", "--co"]
    results["tests"] = run_step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                               *marker, "tests"], args.timeout)
    results["quickstart"] = quickstart(args)
    results["speed"] = speed(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(summary(results) + f"\nresults: {args.out / 'results.json'}")
    return 0 if all(results[name]["status"] == 0 for name in ("tests", "quickstart", "speed")) else 1


if __name__ == "__main__":
    sys.exit(main())
