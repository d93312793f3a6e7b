"""FPTT's per-update cost on the SPYv4 detector's parameters: penalty forward + backward + update
(README "Speed"): FPTT's update (``backend="eager"``: a handful of kernels over one flat state) against
the plain ``_foreach`` form over the tensor list written here from the update equations, and with
``--kernels`` FPTT's CPU operator (``backend="cpu_kernels"``, ``spikeloc/kernels/fptt.cpp``).

All run in turn within every repeat on their own copy of the parameters and state, from the same start;
the script checks that the eager update gives the foreach form's gradients, running average and trace
bitwise (and the operator's to float32 rounding) and prints the medians and the median of the paired
ratios.

Usage::

    python benchmarks/fptt_speed.py [--image-size 416] [--width 1.0] [--repeats 20] [--steps 3] [--kernels]
        [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import common

ALPHA, BETA, UPDATE_ALPHA = 0.1, 0.5, 0.5


class Foreach:
    """The update equations over the tensor list with ``torch._foreach_*`` (the reference)."""

    def __init__(self, params: Any) -> None:
        import torch
        self.params = [p for p in params if p.requires_grad]
        self.running = [p.detach().clone() for p in self.params]
        self.trace = [torch.zeros_like(p) for p in self.params]

    def penalty(self) -> Any:
        import torch
        w = [p.detach() for p in self.params]
        squares = torch._foreach_norm(torch._foreach_sub(w, self.running))
        dots = [torch.dot(x.reshape(-1), lam.reshape(-1)) for x, lam in zip(w, self.trace)]
        value = 0.5 * ALPHA * torch.stack(squares).square().sum() - torch.stack(dots).sum()
        grads = torch._foreach_sub(w, self.running)
        torch._foreach_mul_(grads, ALPHA)
        torch._foreach_sub_(grads, self.trace)
        for p, g in zip(self.params, grads):
            p.grad = g
        return value

    def update(self) -> None:
        import torch
        w = [p.detach() for p in self.params]
        torch._foreach_add_(self.trace, torch._foreach_sub(w, self.running), alpha=-UPDATE_ALPHA)
        torch._foreach_mul_(self.running, 1.0 - BETA)
        torch._foreach_add_(self.running, w, alpha=BETA)
        torch._foreach_add_(self.running, self.trace, alpha=-BETA / UPDATE_ALPHA)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from spikeloc.training.fptt import FPTT
    torch.manual_seed(0)
    model = common.make_detector("fptt", 1, args.image_size, args.width).model
    names = ["foreach", "eager"] + (["cpu_kernels"] if args.kernels else [])
    models = {name: copy.deepcopy(model) for name in names}
    states = {"foreach": Foreach(models["foreach"].parameters()),
              **{name: FPTT(models[name].parameters(), ALPHA, BETA, UPDATE_ALPHA, backend=name) for name in names[1:]}}
    generator = torch.Generator().manual_seed(1)
    noise = [torch.randn(p.shape, generator=generator) * 1e-3 for p in model.parameters() if p.requires_grad]

    def one(name: str) -> tuple[float, Any]:
        fptt = states[name]
        for p in fptt.params:
            p.grad = None
        start = time.perf_counter()
        value = fptt.penalty()
        if value.requires_grad:
            value.backward()
        seconds = time.perf_counter() - start
        with torch.no_grad():  # a stand-in for optimizer.step() (untimed): the weights move
            torch._foreach_add_(fptt.params, noise)
        start = time.perf_counter()
        fptt.update()
        return seconds + time.perf_counter() - start, value.detach()

    for _ in range(args.steps):  # the same numbers from the same start
        values = {name: one(name)[1] for name in states}

    def numbers(name: str) -> list[Any]:
        fptt = states[name]
        return fptt.running + fptt.trace + [p.grad for p in fptt.params]

    times: dict[str, list[float]] = {name: [] for name in states}
    for round_index in range(args.repeats + 1):
        for name in states:
            seconds = one(name)[0]
            if round_index:  # the first round warms up
                times[name].append(seconds)
    params = states["foreach"].params
    result = {"parameters": sum(p.numel() for p in params), "tensors": len(params),
              "same_gradients_and_state": all(torch.equal(x, y) for x, y in zip(numbers("foreach"), numbers("eager"))),
              "same_penalty": values_close(values["foreach"], values["eager"])}
    for name in states:
        result[f"{name}_ms"] = round(1000 * common.median(times[name]), 2)
        result[f"{name}_ratio"] = round(common.median([c / f for f, c in zip(times["foreach"], times[name])]), 3)
    if args.kernels:
        result["cpu_kernels_close"] = values_close(values["foreach"], values["cpu_kernels"]) and all(
            values_close(x, y) for x, y in zip(numbers("foreach"), numbers("cpu_kernels")))
    return result


def values_close(x: Any, y: Any) -> bool:
    """Equal to float32 rounding (the operator sums in another order and fuses multiply-adds)."""
    import torch
    return bool(torch.allclose(x, y, rtol=1e-5, atol=1e-6))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=416)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="untimed steps compared for equality first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernels", action="store_true", help="also time FPTT(backend='cpu_kernels')")
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
              + ", ".join(f"{name} {result[f'{name}_ms']} ms (x{result[f'{name}_ratio']})"
                          for name in ("foreach", "eager", "cpu_kernels") if f"{name}_ms" in result)
              + f"; eager: the foreach numbers bitwise: {result['same_gradients_and_state']}, same penalty: "
              f"{result['same_penalty']}; cpu_kernels to rounding: {result.get('cpu_kernels_close')}")
    if not (result["same_gradients_and_state"] and result["same_penalty"]):
        sys.exit("FPTT's eager update does not reproduce the foreach numbers")
    if result.get("cpu_kernels_close") is False:
        sys.exit("FPTT's CPU operator does not reproduce the foreach numbers")


if __name__ == "__main__":
    main()
