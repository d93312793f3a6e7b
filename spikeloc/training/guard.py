"""Non-finite guard: a step whose loss, gradients or new weights are not finite changes nothing.

How it stays off the host (README "Troubleshooting"): before each optimizer step the guard
copies every tensor the step may change (weights, the optimizer's state tensors, the FPTT running
average and trace) into buffers allocated once; after the step it computes one device-side flag
``ok = isfinite(loss) & isfinite(||grad||) & isfinite(||W||)`` from ``torch._foreach_norm`` and
puts the old values back with ``torch.where(ok, new, old)``. Nothing is read back per step; the
count of consecutive bad steps is read once per batch (:meth:`NonFiniteGuard.check`), which raises
:class:`NonFiniteError` after ``limit`` bad steps in a row.

Two cases cost a host sync: the very first step of a parameter (its optimizer state does not exist
yet, so a bad first step drops that state instead of restoring it) and optimizer state kept on
another device than the flag (e.g. Adam's CPU ``step`` counters when training on a GPU without
``fused=True`` / ``capturable=True``): ``torch.where`` then needs the flag on that device.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """Training produced only non-finite losses or gradients for too many steps in a row."""


def _finite(tensors: Sequence[Tensor]) -> Tensor:
    """One bool scalar: every element of every tensor is finite (no host sync)."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    norms = torch._foreach_norm([t.detach().float() for t in tensors])
    return torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all()


class NonFiniteGuard:
    """Makes one optimizer update transactional: kept when finite, undone otherwise.

    Args:
        params: the trainable parameters.
        optimizer: the optimizer stepping them (its per-parameter state tensors are protected).
        extra: further tensors the update changes in place (the FPTT running average and trace).
        limit: consecutive bad steps after which :meth:`check` raises (0: never).
    """

    def __init__(self, params: Sequence[Tensor], optimizer: torch.optim.Optimizer,
                 extra: Sequence[Tensor] = (), limit: int = 10) -> None:
        self.params, self.optimizer, self.extra, self.limit = list(params), optimizer, list(extra), limit
        self._buffers: list[Tensor] = []
        self._watched: list[Tensor] = []
        self.bad_total: Tensor | None = None  # long scalars on the parameters' device
        self.bad_run: Tensor | None = None

    def _state_tensors(self) -> list[Tensor] | None:
        """The optimizer's tensors for parameters that have a gradient; ``None`` if one has no state yet."""
        tensors = []
        for param in self.params:
            if param.grad is None:
                continue
            state = self.optimizer.state.get(param)
            if state is None:
                return None
            tensors += [value for value in state.values() if isinstance(value, Tensor)]
        return tensors

    @contextmanager
    def update(self, loss: Tensor) -> Iterator[None]:
        """Wrap ``optimizer.step()`` (and the FPTT update): undone if anything came out non-finite.

        ``loss``: the scalar just back-propagated; the gradients must be in place on entry.
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        ok = torch.isfinite(loss.detach()).all() & _finite(grads).to(loss.device)
        state = self._state_tensors()
        if state is None:  # first step of some parameter: decide on the host (once)
            snapshot = [t.detach().clone() for t in self.params + self.extra]
            yield
            ok = ok & _finite(self.params).to(ok.device)
            if not bool(ok):
                torch._foreach_copy_([t.detach() for t in self.params + self.extra], snapshot)
                for param in self.params:
                    self.optimizer.state.pop(param, None)
            self._count(ok)
            return
        watched = [t.detach() for t in self.params + self.extra] + state
        if [t.data_ptr() for t in watched] != [t.data_ptr() for t in self._watched]:
            self._watched, self._buffers = watched, [t.clone() for t in watched]
        else:
            torch._foreach_copy_(self._buffers, watched)
        yield
        ok = ok & _finite(self.params).to(ok.device)
        for new, old in zip(self._watched, self._buffers):
            new.copy_(torch.where(ok.to(new.device), new, old))
        self._count(ok)

    def _count(self, ok: Tensor) -> None:
        bad = (~ok).long()
        if self.bad_total is None:
            self.bad_total, self.bad_run = torch.zeros_like(bad), torch.zeros_like(bad)
        self.bad_total += bad
        self.bad_run = (self.bad_run + bad) * bad

    def check(self) -> None:
        """Raise :class:`NonFiniteError` after ``limit`` bad steps in a row (one host sync)."""
        if self.limit and self.bad_run is not None and int(self.bad_run) >= self.limit:
            raise NonFiniteError(
                f"{int(self.bad_run)} optimizer steps in a row had a non-finite loss, gradient or weight "
                f"({int(self.bad_total)} in all); every one was skipped, so the weights are the last finite ones. "
                "Lower the learning rate, check the scheduler and the input data, or resume from the last "
                "checkpoint (see README, Troubleshooting). model.max_nonfinite_steps sets this limit.")
