"""One training batch, top to bottom: the FPTT / BPTT time loop (docs/training.md).

A batch is shown for T steps. Under FPTT the steps are cut into K spans; each span is forwarded from
the state the previous one left, detached, and its loss plus FPTT's penalty takes one optimizer update
(K updates per batch, so ``trainer.global_step`` grows by K). BPTT is one span of all T steps. With
``twin_joint`` the spiking network's batch starts with one update of the network run as its ANN twin.
:func:`train_batch` is the whole procedure; :class:`~spikeloc.training.OnlineModule` calls it from
``training_step`` and logs what it returns.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from spikeloc.neurons import detach_state, set_twin
from .guard import NonFiniteGuard

if TYPE_CHECKING:
    from .loop import OnlineModule

Weighting = Literal["uniform", "linear", "last"]
InputAt = Callable[[int], Tensor]


def step_weights(num_steps: int, weighting: Weighting = "uniform", start: int = 0) -> list[float]:
    """Loss weight of every time step: ``uniform`` 1, ``linear`` (t+1)/T, ``last`` only t = T-1.

    Steps before ``start`` get weight 0 (read the loss from the last steps only).
    """
    if weighting == "uniform":
        weights = [1.0] * num_steps
    elif weighting == "linear":
        weights = [(t + 1) / num_steps for t in range(num_steps)]
    elif weighting == "last":
        weights = [0.0] * (num_steps - 1) + [1.0]
    else:
        raise ValueError(f"loss_weighting must be uniform, linear or last, got {weighting!r}")
    weights = [w if t >= start else 0.0 for t, w in enumerate(weights)]
    if not any(weights):
        raise ValueError(f"loss_start_step={start} leaves no step with a loss out of {num_steps}")
    return weights


def split_steps(num_steps: int, parts: int) -> list[range]:
    """Cut ``range(num_steps)`` into ``parts`` equal consecutive spans."""
    if parts < 1 or num_steps % parts:
        raise ValueError(f"fptt.parts={parts} must divide the number of time steps T={num_steps}")
    size = num_steps // parts
    return [range(start, start + size) for start in range(0, num_steps, size)]


def present(x: Tensor, num_steps: int) -> tuple[InputAt, int]:
    """How a batch is shown over time: ``[B, C, H, W]`` the same frame for ``num_steps``;
    ``[B, T, ...]`` (frames or vectors) one slice per step. Returns ``(input_at, T)``."""
    if x.dim() == 4:
        return (lambda t: x), num_steps
    if x.dim() in (3, 5):
        return (lambda t: x[:, t]), x.shape[1]
    raise ValueError(f"input of shape {tuple(x.shape)}: expected [B,C,H,W], [B,T,C,H,W] or [B,T,D]")


@dataclass
class BatchResult:
    """What a batch's updates produced (all detached): the task loss summed over spans, the FPTT penalty
    summed over updates, the named loss parts summed over weighted steps, and the counts to average them."""

    loss: Tensor
    penalty: Tensor | float = 0.0
    parts: dict[str, Tensor] = field(default_factory=dict)
    spans: int = 1
    weighted_steps: int = 1
    twin_loss: Tensor | None = None
    batch_size: int = 0


def train_batch(module: OnlineModule, batch: Any, optimizer: Any) -> BatchResult:
    """Train ``module`` on one batch: an optional twin update, then one update per span."""
    input_at, num_steps = module.laid_out_inputs(batch)
    weights = step_weights(num_steps, module.loss_weighting, module.loss_start_step)
    spans = split_steps(num_steps, module.updates_per_batch(num_steps))
    guard = module.guard_for(optimizer)
    result = BatchResult(loss=torch.zeros((), device=module.device), spans=len(spans),
                         weighted_steps=sum(w > 0 for w in weights), batch_size=input_at(0).shape[0])
    if module.twin_joint and not module.twin_active:
        guard.begin()
        with twin_pass(module):
            twin_loss, _, _ = span_loss(module, batch, input_at, range(1), [1.0], None)
        result.penalty = result.penalty + update(module, optimizer, guard, module.twin_joint * twin_loss)
        result.twin_loss = twin_loss.detach()
    state = None
    for span in spans:
        state = detach_state(state)
        guard.begin()  # before the forward: it also undoes BN's running statistics
        loss, state, parts = span_loss(module, batch, input_at, span, weights, state)
        result.loss = result.loss + loss.detach()
        result.parts = {name: result.parts.get(name, 0.0) + value for name, value in parts.items()}
        result.penalty = result.penalty + update(module, optimizer, guard, loss)
    return result


def span_loss(module: OnlineModule, batch: Any, input_at: InputAt, span: range, weights: list[float],
              state: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
    """Forward the steps of ``span``: mean of the weighted losses of its weighted steps, the state,
    and the sums of the (detached) named loss parts over those steps."""
    weighted = [t for t in span if weights[t] > 0]
    loss, parts = torch.zeros((), device=module.device), {}
    with torch.set_grad_enabled(bool(weighted)):  # no loss in this span: no graph needed
        for t in span:
            output, state = module.forward_step(input_at(t), state)
            if weights[t] > 0:
                step = module.step_loss(output, batch)
                loss = loss + weights[t] * step["loss"]
                parts = {name: parts.get(name, 0.0) + value.detach() for name, value in step.items()
                         if name != "loss"}
    return loss / max(len(weighted), 1), state, parts


def update(module: OnlineModule, optimizer: Any, guard: NonFiniteGuard, loss: Tensor) -> Tensor:
    """One optimizer update on ``loss`` plus FPTT's penalty: backward, the step (clipping and the guard's
    check run in ``on_before_optimizer_step``, after AMP unscales), then the guard keeps or undoes it and
    FPTT's trace follows. ``guard.begin()`` came before the forward. Returns the penalty, detached."""
    fptt = module.fptt
    penalty = fptt.penalty() if fptt is not None else loss.new_zeros(())
    loss = loss + penalty
    optimizer.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    guard.expect(loss)
    optimizer.step()
    staged = fptt.stage() if fptt is not None else None
    ok = guard.commit(staged)  # a non-finite update is undone (or was skipped)
    if fptt is not None:
        fptt.accept(ok)
    return penalty.detach()


@contextlib.contextmanager
def twin_pass(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s spiking neurons as their ANN twin inside the block, its batch norms' running
    statistics (and batch counts) left as they were: those stay the spiking network's."""
    norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    kept = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
            for m in norms]
    set_twin(module, True)
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        set_twin(module, False)
        for norm, (momentum, count) in zip(norms, kept):
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)
