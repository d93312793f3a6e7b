"""Inference latency per image at each T for every registered spiking backbone (README "Speed").

Each backbone from timm's registry (``spyv4*``, ``ltc_*``, ``srnn_*``) is built with
``num_classes=0`` and run for T steps on one batch under ``torch.inference_mode`` (the state
carried from step to step, as evaluation does); the latency per image is the median over
``--repeats`` of the T-step time divided by the batch size. Image backbones see static
``[B, 3, S, S]`` frames; ``srnn_ltc`` (a recurrent dense net for vector sequences) sees one
``[B, 1]`` value per step, the sequential-pixel setting, so its "image" is a T-pixel sequence.

Usage::

    python benchmarks/infer_speed.py [--models spyv4_tiny ltc_resnet18 ...] [--steps 1 4 8 16]
        [--image-size 64] [--width 0.5] [--batch-size 4] [--repeats 3] [--json]

With ``--json`` the last stdout line is one object: ``device``, ``threads``, ``torch``,
``image_size``, ``width``, ``batch_size`` and ``latency_ms`` (model -> {T: ms per image}).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import common

PATTERNS = ["spyv4*", "ltc_*", "srnn_*"]
VECTOR_MODELS = {"srnn_ltc"}  # inputs [B, D], not images


def registered() -> list[str]:
    """Every spiking backbone name timm knows from ``spikeloc.models``."""
    import timm
    import spikeloc.models  # noqa: F401  (registers them)
    return timm.list_models(PATTERNS)


def build(name: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """The backbone (eval mode, on the device) and its input batch."""
    import timm
    import torch
    torch.manual_seed(0)
    if name in VECTOR_MODELS:
        net = timm.create_model(name, num_classes=0, in_chans=1)
        x = torch.rand(args.batch_size, 1)
    else:
        net = timm.create_model(name, num_classes=0, in_chans=3, width=args.width)
        x = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    return net.eval().to(args.device), x.to(args.device)


def latency(net: Any, x: Any, num_steps: int, repeats: int) -> float:
    """Median seconds of ``num_steps`` steps of ``net`` on ``x`` (one warm-up run first)."""
    import torch

    def run() -> None:
        state = None
        for _ in range(num_steps):
            _, state = net(x, state)
        if x.is_cuda:
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        run()
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return common.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="registered names (default: all)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 16], help="values of T")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square frames (multiple of 32)")
    parser.add_argument("--width", type=float, default=0.5, help="channel width of the image backbones")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per T (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    names = registered()
    unknown = sorted(set(args.models or []) - set(names))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; registered: {names}")
    table: dict[str, dict[str, float]] = {}
    for name in args.models or names:
        net, x = build(name, args)
        table[name] = {str(t): round(1000 * latency(net, x, t, args.repeats) / args.batch_size, 3)
                       for t in args.steps}
    result = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
              "image_size": args.image_size, "width": args.width, "batch_size": args.batch_size,
              "latency_ms": table}
    if args.json:
        print(json.dumps(result))
        return
    print(f"ms per image under inference_mode ({args.device}, {args.threads} thread(s)); "
          f"{args.image_size}x{args.image_size}, width {args.width}, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"{'backbone':>14} " + " ".join(f"{'T=' + str(t):>9}" for t in args.steps) + f" {'per step':>9}")
    for name, row in table.items():
        per_step = row[str(args.steps[-1])] / args.steps[-1]
        print(f"{name:>14} " + " ".join(f"{row[str(t)]:>9.2f}" for t in args.steps) + f" {per_step:>9.2f}")


if __name__ == "__main__":
    main()
