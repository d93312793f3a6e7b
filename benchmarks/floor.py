"""The memory-traffic floor of the training step's non-convolution work (README "Speed").

Around its convolutions, a step of the LTC-SNN detector does element-wise work and reductions over
tensors too big for the cache: two training-mode batch norms and the LTC-SN step per cell, forward
and backward, then, per optimizer update, clipping, Adam and FPTT over every parameter. Whatever
the implementation around library convolutions (whose outputs land in memory), that work has to
stream its operands through memory a number of times its equations fix; at this machine's streaming
speed that takes at least :func:`floor_seconds`. With a step's profiled convolution time,
``best_conv_share`` is the largest convolution share that an implementation of the same maths
around the same convolutions can reach here (:func:`against_floor`).

Passes (``R`` reads, ``W`` writes, each of a whole tensor) when a tensor does not stay in cache, per
LTC cell ``i = BN(c)`` with ``c = conv(x)``, ``tau = sigmoid(BN'(c'))`` with ``c' = conv'(i + u)``, spikes and
``u'`` from ``i``, ``tau`` and ``u``, of the cell's output size, per time step:

- forward, 7 R 3 W: BN's statistics of ``c`` (1 R); ``i + u`` for ``conv'`` (2 R, 1 W); BN''s
  statistics of ``c'`` (1 R); spikes and ``u'`` from ``c``, ``c'`` and ``u`` (3 R, 2 W);
- backward, 13 R 3 W: BN''s two sums over the surrogate-weighted spike gradient (the spike gradient,
  ``c``, ``c'``, ``u``: 4 R); the same reads again for ``c'``'s gradient and ``i``'s direct gradient,
  whose two BN sums are taken on the way (4 R, 2 W); the sums of the part ``conv'``'s backward adds
  (its gradient, ``c``: 2 R); ``c``'s gradient (both parts, ``c``: 3 R, 1 W). Or, not storing ``i``'s
  direct gradient, 15 R 2 W: the last pass recomputes it (5 R, 1 W).

Per optimizer update, of the parameter count, 10 R 5 W: clipping's norm of the gradient, model part
plus FPTT's closed-form penalty part ``alpha (W - W_bar) - lam`` (gradient, ``W``, ``W_bar``, ``lam``: 4 R);
then Adam and FPTT's update in one pass (gradient, ``W``, Adam's two moments, ``W_bar``, ``lam``: 6 R;
``W``, the moments, ``W_bar``, ``lam``: 5 W). Or 8 R 6 W: that pass also writes the next penalty gradient,
so the norm reads 2 tensors. Each size takes the cheaper order at its measured read and write times.
The neck's pooling and concatenation, the head, the loss and the Python count zero, as does a neck
cell's batch norm beyond its smaller size, so the floor is a lower bound by this count. fp32
throughout: a bf16 step streams fewer bytes and its floor is lower.
"""
from __future__ import annotations

import time
from typing import Any

# (reads, writes) orders of each LTC cell's output size per time step, of the parameters per update (docstring)
CELL_PASSES = ((20, 6), (22, 5))
UPDATE_PASSES = ((10, 5), (8, 6))


def ltc_cell_sizes(model: Any, image_size: int, batch_size: int) -> list[int]:
    """Output elements of every spiking LTC cell (``SpikingConv2d`` with an ``LTCNeuron``) in one time step:
    the smaller of its batch norm's and its neuron's (a neck cell upsamples between the two). The model
    runs once in eval mode, under a forked RNG: its buffers and the global RNG are left as they were."""
    import torch
    from spikeloc.neurons import LTCNeuron, SpikingConv2d
    cells = [m for m in model.modules() if isinstance(m, SpikingConv2d) and isinstance(m.neuron, LTCNeuron)
             and not m.neuron.twin]
    seen: dict[int, list[int]] = {index: [] for index in range(len(cells))}
    handles = []
    for index, cell in enumerate(cells):
        for part in (cell.bn, cell.neuron):
            handles.append(part.register_forward_hook(
                lambda _, __, out, index=index: seen[index].append((out[0] if isinstance(out, tuple) else out).numel())))
    training, device = model.training, next(model.parameters()).device
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()(torch.zeros(batch_size, 3, image_size, image_size, device=device), None)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return [min(sizes) for sizes in seen.values() if sizes]


def stream_seconds(numel: int, device: str = "cpu", calls: int = 8, rounds: int = 5) -> tuple[float, float]:
    """Seconds to read a float32 tensor of ``numel`` elements once (a sum), and the extra time to write
    one (a copy minus a read), on ``device``: the fastest of ``rounds`` rounds of ``calls`` back-to-back
    calls, less the same for one element (the cost of a call, not of the data)."""
    import torch

    def per_call(n: int) -> tuple[float, float]:
        source, target = torch.rand(n, device=device), torch.empty(n, device=device)
        sync = torch.cuda.synchronize if source.is_cuda else (lambda: None)

        def fastest(fn: Any) -> float:
            fn()  # touches the pages
            times = []
            for _ in range(rounds):
                sync()
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync()
                times.append((time.perf_counter() - start) / calls)
            return min(times)

        return fastest(source.sum), fastest(lambda: target.copy_(source))

    read, copy = per_call(numel)
    empty_read, empty_copy = per_call(1)
    read = max(read - empty_read, 0.0)
    return read, max(copy - empty_copy - read, 0.0)


def _passes(sizes: list[int], orders: tuple[tuple[int, int], ...], stream: Any) -> float:
    """Seconds of the cheapest of ``orders`` (reads, writes) over tensors of each of ``sizes`` elements,
    each size timed once."""
    total = 0.0
    for numel in set(sizes):
        read, write = stream(numel)
        total += sizes.count(numel) * min(reads * read + writes * write for reads, writes in orders)
    return total


def floor_seconds(cell_sizes: list[int], parameter_sizes: list[int], num_steps: int, updates: int,
                  stream: Any = stream_seconds) -> dict[str, float]:
    """The floor of one batch: ``num_steps`` time steps over the cells and ``updates`` optimizer
    updates over the parameter tensors; ``stream(numel) -> (read_s, write_s)`` times one pass.

    Each tensor is timed on its own, read again and again, so it streams from a cache where it fits: the
    floor assumes the best placement."""
    cells = num_steps * _passes(cell_sizes, CELL_PASSES, stream)
    update = updates * _passes(parameter_sizes, UPDATE_PASSES, stream)
    return {"cells_s": cells, "updates_s": update, "total_s": cells + update}


def detector_floor(module: Any, image_size: int, batch_size: int, num_steps: int,
                   device: str = "cpu") -> dict[str, Any]:
    """:func:`floor_seconds` of a ``SpikingDetector`` trained with FPTT (one update per time step) on ``device``."""
    sizes = ltc_cell_sizes(module.model, image_size, batch_size)
    parameters = [p.numel() for p in module.parameters() if p.requires_grad]
    floor = floor_seconds(sizes, parameters, num_steps, num_steps, lambda numel: stream_seconds(numel, device))
    return {"cells": len(sizes), "cell_elements": sum(sizes), "parameters": sum(parameters),
            **{key: round(value, 6) for key, value in floor.items()}}


def against_floor(conv_s: float, nonconv_s: float, floor_s: float) -> dict[str, float]:
    """A step's profiled convolution and other seconds against the floor: the best convolution share
    (convolutions as they are, the rest at the floor) and how many floors the rest takes now."""
    return {"conv_s": round(conv_s, 6), "nonconv_s": round(nonconv_s, 6),
            "best_conv_share": round(conv_s / (conv_s + floor_s), 4),
            "nonconv_over_floor": round(nonconv_s / floor_s, 2)}
