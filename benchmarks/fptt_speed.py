"""FPTT's per-update cost on the SPYv4 detector's parameters: penalty forward + backward + update
(README "Speed"), blocked (:data:`spikeloc.training.fptt.CPU_BLOCK`) against the plain ``_foreach``
form over the whole tensor list (``FPTT.block = None``: what other devices run, and the CPU did before).

Both run in turn within every repeat on their own copy of the parameters and FPTT state, from the
same start; the script checks that they give the same gradients, running average and trace (bitwise)
and prints the medians and the median of the paired ratios. ``--compiled`` adds FPTT's compiled form
(``FPTT(compile=True)``, what ``compile_step`` runs; compiled in the first, untimed steps), checked
against the foreach numbers to float32 rounding; ``--native`` likewise its hand-written kernel
(``FPTT(native=True)``, what native cells run; ``spikeloc/kernels/fptt.c``).

Usage::

    python benchmarks/fptt_speed.py [--image-size 416] [--width 1.0] [--repeats 20] [--steps 3] [--compiled]
        [--native] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import common


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from spikeloc.training.fptt import FPTT
    torch.manual_seed(0)
    model = common.make_detector("fptt", 1, args.image_size, args.width).model
    extras = [name for name in ("compiled", "native") if getattr(args, name)]
    models = {"foreach": model, "blocked": copy.deepcopy(model), **{name: copy.deepcopy(model) for name in extras}}
    states = {name: FPTT(m.parameters(), alpha=0.1, beta=0.5, update_alpha=0.5, compile=name == "compiled",
                         native=name == "native") for name, m in models.items()}
    baseline = states["foreach"]  # its state as before: one tensor per parameter, not views of one buffer
    baseline.running, baseline.trace = [t.clone() for t in baseline.running], [t.clone() for t in baseline.trace]
    baseline.block = None
    generator = torch.Generator().manual_seed(1)
    noise = [torch.randn(p.shape, generator=generator) * 1e-3 for p in model.parameters() if p.requires_grad]

    def one(name: str) -> float:
        fptt = states[name]
        for p in fptt.params:
            p.grad = None
        start = time.perf_counter()
        value = fptt.penalty()
        value.backward()
        seconds = time.perf_counter() - start
        with torch.no_grad():  # a stand-in for optimizer.step() (untimed): the weights move
            torch._foreach_add_(fptt.params, noise)
        start = time.perf_counter()
        fptt.update()
        return seconds + time.perf_counter() - start, value.detach()

    for _ in range(args.steps):  # same numbers from the same start
        values = {name: one(name)[1] for name in states}

    def numbers(name: str) -> list[Any]:
        """Running average, trace and gradients of one variant."""
        fptt = states[name]
        return fptt.running + fptt.trace + [p.grad for p in fptt.params]

    same = all(torch.equal(x, y) for x, y in zip(numbers("foreach"), numbers("blocked")))
    value_close = values_close(values["foreach"], values["blocked"])
    times: dict[str, list[float]] = {name: [] for name in states}
    for round_index in range(args.repeats + 1):
        for name in states:
            seconds = one(name)[0]
            if round_index:  # the first round warms up
                times[name].append(seconds)
    ratio = common.median([b / a for a, b in zip(times["foreach"], times["blocked"])])
    params = states["foreach"].params
    result = {"parameters": sum(p.numel() for p in params), "tensors": len(params),
              "foreach_ms": round(1000 * common.median(times["foreach"]), 2),
              "blocked_ms": round(1000 * common.median(times["blocked"]), 2), "ratio": round(ratio, 3),
              "same_gradients_and_state": same, "same_penalty": value_close}
    for name in extras:
        result[f"{name}_ms"] = round(1000 * common.median(times[name]), 2)
        result[f"{name}_ratio"] = round(common.median([c / f for f, c in zip(times["foreach"], times[name])]), 3)
        result[f"{name}_close"] = values_close(values["foreach"], values[name]) and all(
            values_close(x, y) for x, y in zip(numbers("foreach"), numbers(name)))
    return result


def values_close(x: Any, y: Any) -> bool:
    """Equal to float32 rounding (a compiled kernel may sum in another order)."""
    import torch
    return bool(torch.allclose(x, y, rtol=1e-5, atol=1e-6))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=416)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="untimed steps compared for equality first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="also time FPTT(compile=True)")
    parser.add_argument("--native", action="store_true", help="also time FPTT(native=True)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with common.quiet():
        import torch
        torch.set_num_threads(args.threads)
        result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['tensors']} tensors, {result['parameters']} parameters: penalty + backward + update "
              f"foreach {result['foreach_ms']} ms, blocked {result['blocked_ms']} ms, ratio {result['ratio']}; "
              f"same gradients and state: {result['same_gradients_and_state']}, same penalty: {result['same_penalty']}")
        for name in ("compiled", "native"):
            if f"{name}_ms" in result:
                print(f"{name} {result[f'{name}_ms']} ms, ratio {result[f'{name}_ratio']}; "
                      f"the same numbers to rounding: {result[f'{name}_close']}")
    if not (result["same_gradients_and_state"] and result["same_penalty"]):
        sys.exit("blocked FPTT does not reproduce the foreach numbers")
    for name in ("compiled", "native"):
        if result.get(f"{name}_close") is False:
            sys.exit(f"{name} FPTT does not reproduce the foreach numbers")


if __name__ == "__main__":
    main()
