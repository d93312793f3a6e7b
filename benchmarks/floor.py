"""The memory-traffic floor of the training step's non-convolution work (README "Speed").

Around its convolutions, a step of the LTC-SNN detector does element-wise work and reductions over
tensors too big for the cache: two training-mode batch norms and the LTC-SN step per cell, forward
and backward, then, per optimizer update, clipping, Adam and FPTT over every parameter. Whatever
the implementation around library convolutions (whose outputs land in memory), that work has to
stream its operands through memory a number of times its equations fix; at this machine's streaming
speed that takes at least :func:`floor_seconds`. With the profiled convolution time,
``best_conv_share`` is the largest convolution share of the step that any implementation of the
same maths can reach here.

Fewest passes (``R`` reads, ``W`` writes, each of a whole tensor) when a tensor does not stay in
cache, per LTC cell ``i = BN(conv(x))``, ``tau = sigmoid(BN'(conv'(i + u)))``, spikes and ``u'`` from
``i``, ``tau`` and ``u``, of the cell's output size, per time step:

- forward, 7 R 3 W: BN's statistics of ``conv(x)`` (1 R); ``i + u`` for ``conv'`` (2 R, 1 W); BN''s
  statistics (1 R); spikes and ``u'`` from ``conv(x)``, ``conv'(i + u)`` and ``u`` (3 R, 2 W);
- backward, 14 R 3 W: BN''s two sums over the surrogate-weighted spike gradient (the spike gradient,
  ``conv(x)``, ``conv'(i + u)``, ``u``: 4 R); then the gradient of ``conv'``'s output and ``i``'s direct
  gradient (4 R, 2 W); BN's two sums over ``i``'s whole gradient (direct, from ``conv'``'s backward,
  ``conv(x)``: 3 R); the gradient of ``conv``'s output (3 R, 1 W).

Per optimizer update, of the parameter count, 10 R 5 W: clipping's norm of the gradient, model part
plus FPTT's closed-form penalty part ``alpha (W - W_bar) - lam`` (gradient, ``W``, ``W_bar``, ``lam``: 4 R);
then Adam and FPTT's update in one pass (gradient, ``W``, Adam's two moments, ``W_bar``, ``lam``: 6 R;
``W``, the moments, ``W_bar``, ``lam``: 5 W). The neck's pooling and concatenation, the head, the loss and
the Python around them count zero, so the floor is a lower bound. fp32 throughout: a bf16 step streams
fewer bytes and its floor is lower.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

CELL_PASSES = (21, 6)  # reads, writes of each LTC cell's output size per time step (module docstring)
UPDATE_PASSES = (10, 5)  # reads, writes of the parameter count per optimizer update


def ltc_cell_sizes(model: Any, image_size: int, batch_size: int) -> list[int]:
    """Output elements of every spiking LTC cell (``SpikingConv2d`` with an ``LTCNeuron``) in one time step:
    the smaller of its batch norm's and its neuron's (a neck cell upsamples between the two)."""
    import torch
    from spikeloc.neurons.modules import LTCNeuron, SpikingConv2d
    cells = [m for m in model.modules() if isinstance(m, SpikingConv2d) and isinstance(m.neuron, LTCNeuron)
             and not m.neuron.twin]
    seen: dict[int, list[int]] = {index: [] for index in range(len(cells))}
    handles = []
    for index, cell in enumerate(cells):
        for part in (cell.bn, cell.neuron):
            handles.append(part.register_forward_hook(
                lambda _, __, out, index=index: seen[index].append((out[0] if isinstance(out, tuple) else out).numel())))
    try:
        with torch.no_grad():
            model(torch.zeros(batch_size, 3, image_size, image_size), None)
    finally:
        for handle in handles:
            handle.remove()
    return [min(sizes) for sizes in seen.values() if sizes]


def stream_seconds(numel: int, device: str = "cpu", repeats: int = 9) -> tuple[float, float]:
    """Median seconds to read a float32 tensor of ``numel`` elements once (a sum), and the extra time to
    write one (a copy minus a read), on ``device``."""
    import torch
    source, target = torch.rand(numel, device=device), torch.empty(numel, device=device)
    sync = torch.cuda.synchronize if source.is_cuda else (lambda: None)

    def median(fn: Any) -> float:
        times = []
        for _ in range(repeats + 1):  # the first touches the pages
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    read = median(source.sum)
    return read, max(median(lambda: target.copy_(source)) - read, 0.0)


def _passes(sizes: list[int], passes: tuple[int, int], stream: Any) -> float:
    """Seconds of ``passes`` (reads, writes) over tensors of each of ``sizes`` elements, each size timed once."""
    total = 0.0
    for numel in set(sizes):
        read, write = stream(numel)
        total += sizes.count(numel) * (passes[0] * read + passes[1] * write)
    return total


def floor_seconds(cell_sizes: list[int], parameter_sizes: list[int], num_steps: int, updates: int,
                  stream: Any = stream_seconds) -> dict[str, float]:
    """The floor of one batch: ``num_steps`` time steps over the cells and ``updates`` optimizer
    updates over the parameter tensors; ``stream(numel) -> (read_s, write_s)`` times one pass.

    Each tensor is timed on its own, read again and again, so it streams from the nearest cache that holds
    it: the floor assumes the best placement."""
    cells = num_steps * _passes(cell_sizes, CELL_PASSES, stream)
    update = updates * _passes(parameter_sizes, UPDATE_PASSES, stream)
    return {"cells_s": cells, "updates_s": update, "total_s": cells + update}


def detector_floor(module: Any, image_size: int, batch_size: int, num_steps: int, conv_s: float,
                   device: str = "cpu") -> dict[str, Any]:
    """:func:`floor_seconds` of a ``SpikingDetector`` trained with FPTT (one update per time step) on
    ``device``, and the best convolution share given ``conv_s``, the convolutions' profiled seconds per batch."""
    sizes = ltc_cell_sizes(module.model, image_size, batch_size)
    parameters = [p.numel() for p in module.parameters() if p.requires_grad]
    floor = floor_seconds(sizes, parameters, num_steps, num_steps, lambda numel: stream_seconds(numel, device))
    return {"cells": len(sizes), "cell_elements": sum(sizes), "parameters": sum(parameters),
            **{key: round(value, 6) for key, value in floor.items()},
            "conv_s": round(conv_s, 6), "best_conv_share": round(conv_s / (conv_s + floor["total_s"]), 4)}
