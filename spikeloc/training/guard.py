"""Non-finite guard: a step whose loss, gradients or new weights are not finite changes nothing
(where bad updates are skipped, non-finite new weights from finite gradients stop training instead).

How it stays off the host (docs/troubleshooting.md): before each update the guard copies every
tensor the update may change (weights, buffers such as batch-norm statistics, the optimizer's state
tensors, the FPTT running average and trace where FPTT updates them in place) into buffers allocated
once; after the update it computes one device-side flag ``ok = isfinite(loss) & isfinite(||g||, ||W||,
||buffers||)`` from ``torch._foreach_norm`` (``||g||`` is clipping's total norm where the loop clips by
norm) and puts the old values back with ``torch.where(ok, new, old)``. On the CPU, FPTT stages its
update in spare buffers instead (:meth:`FPTT.stage`): the flag also covers the staged value, and the
update is kept with the step or dropped (:meth:`FPTT.accept`), so none of that state is copied; as that
value is finite only when the new weights are, they are not read again. Nothing is read back per
step; the count of consecutive bad steps is read once per batch (:meth:`NonFiniteGuard.check`), which
raises :class:`NonFiniteError` after ``limit`` in a row.
A flag on the CPU is read at once instead (nothing runs ahead of the host there, so reading stalls
nothing), and the old values are copied back only after a bad update, instead of one ``torch.where``
and one copy per tensor (two per weight, four with Adam) after every update.
The price is one copy of those tensors per update (memory: once more the weights, buffers,
optimizer and FPTT state; on the CPU the FPTT spare buffers take the place of its copy).

Skipped instead of undone (``skip_bad_updates``, which the training loop sets on the CPU for
``torch.optim``'s optimizers under 32-true or bf16-mixed): the loss, the gradients and the buffers
are checked *before* ``optimizer.step()`` (:meth:`NonFiniteGuard.precheck`, right after clipping
took the gradients' norm), and a bad update is skipped by dropping the gradients (``torch.optim``
steps no parameter without one). Only the buffers, which the forward pass moves (batch-norm
statistics), are copied: not the weights and the optimizer's state (with Adam three times the
weights' memory). Finite gradients
give finite new weights with these optimizers unless the learning rate is absurd or not finite; the
new weights are still checked, and should one not be finite, which cannot be undone without the
copy, :class:`NonFiniteError` stops training at once (the last checkpoint is intact).

Two cases cost a host sync: a bad very first step of a parameter (its new optimizer state is
dropped, as it did not exist before) and optimizer state kept on another device than the flag
(e.g. Adam's CPU ``step`` counters when training on a GPU without ``fused=True`` or
``capturable=True``): ``torch.where`` then needs the flag on that device.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """Training produced only non-finite losses or gradients for too many steps in a row."""


def _finite(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """One bool scalar on ``device``: every element of every tensor is finite (no host sync)."""
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    norms = torch._foreach_norm([t.detach().float() for t in tensors])
    return torch.stack([n.to(norms[0].device) for n in norms]).isfinite().all().to(device)


class NonFiniteGuard:
    """Makes one optimizer update transactional: kept when finite, undone otherwise.

    One update is one transaction: :meth:`begin` before its forward pass, :meth:`expect` with its loss before
    ``optimizer.step()``, :meth:`precheck` inside the step (after clipping, with the norm it took) and
    :meth:`commit` after it (and after :meth:`FPTT.stage`); the gradients must still be in place.

    Args:
        params: the trainable parameters.
        optimizer: the optimizer stepping them (its per-parameter state tensors are protected).
        extra: further tensors the update changes in place: the model's buffers (batch-norm
            statistics move in the forward pass), FPTT's :meth:`~FPTT.in_place_state`.
        limit: consecutive bad steps after which :meth:`check` raises (0: never).
        staged_covers: weights whose finiteness the ``staged`` value of :meth:`commit` implies
            (FPTT's, whose staged penalty value is finite only when they all are): not read again.
        skip_bad_updates: check the loss and gradients before the update (:meth:`precheck`) and skip
            a bad one instead of undoing it (see the module doc); only where the parameters are on the
            CPU and ``read_cpu_flag`` holds, and only for optimizers that step no parameter without a
            gradient (``torch.optim``'s).
    """

    read_cpu_flag = True  # restore by reading the flag when it lives on the CPU (see the module doc)

    def __init__(self, params: Sequence[Tensor], optimizer: torch.optim.Optimizer,
                 extra: Sequence[Tensor] = (), limit: int = 10, staged_covers: Sequence[Tensor] = (),
                 skip_bad_updates: bool = False) -> None:
        self.params, self.optimizer, self.extra, self.limit = list(params), optimizer, list(extra), limit
        self.skip_bad_updates = skip_bad_updates
        self._skipping = False  # skip_bad_updates applies to the coming update (decided by begin)
        self._checked: Tensor | None = None  # precheck's flag for the coming update
        self._skipped = False  # precheck found it bad (and dropped the gradients)
        self._loss: Tensor | None = None  # the coming update's loss (expect)
        self._grad_norm: Tensor | None = None  # the gradients' total norm clipping took (precheck)
        covered = {id(p) for p in staged_covers}
        self._not_staged = [p for p in self.params if id(p) not in covered]  # weights to read with ``staged``
        self._watched: list[Tensor] = []
        self._buffers: list[Tensor] = []
        self._on_cpu = True
        self._stateful: set[int] = set()
        self.bad_total: Tensor | None = None  # long scalars on the parameters' device
        self.bad_run: Tensor | None = None

    def __getstate__(self) -> dict:
        """Pickled (e.g. with the module for ``ddp_spawn``) as its counters only; rebuilt on next use."""
        return {"limit": self.limit, "bad_total": self.bad_total, "bad_run": self.bad_run}

    def __setstate__(self, state: dict) -> None:
        self.__init__([], None, (), state["limit"])  # type: ignore[arg-type]
        self.bad_total, self.bad_run = state["bad_total"], state["bad_run"]

    def _tensors(self) -> list[Tensor]:
        """Everything an update may change: weights, extra tensors, the optimizer's state tensors; only
        the extra tensors where a bad update is skipped rather than undone."""
        if self._skipping:
            return [t.detach() for t in self.extra]
        state = [v for p in self.params for v in self.optimizer.state.get(p, {}).values() if isinstance(v, Tensor)]
        return [t.detach() for t in self.params + self.extra] + state

    def begin(self) -> None:
        """Copy every tensor the coming update may change into buffers allocated once."""
        self._skipping = self.skip_bad_updates and self.read_cpu_flag and \
            all(p.device.type == "cpu" for p in self.params)
        self._checked, self._skipped = None, False
        watched = self._tensors()
        if [t.data_ptr() for t in watched] != [t.data_ptr() for t in self._watched]:
            self._watched, self._buffers = watched, [t.clone() for t in watched]
            self._on_cpu = all(t.device.type == "cpu" for t in watched)
        elif watched:
            torch._foreach_copy_(self._buffers, watched)
        self._stateful = {id(p) for p in self.params if p in self.optimizer.state}

    def expect(self, loss: Tensor) -> None:
        """The loss of the coming update, before ``optimizer.step()``."""
        self._loss, self._grad_norm = loss, None

    def precheck(self, grad_norm: Tensor | None = None) -> None:
        """Right before the optimizer changes anything (inside its step, after clipping): keep ``grad_norm``,
        the gradients' total norm where clipping took it (finite exactly when every gradient is, short of
        overflow, so the gradients are not read again). Where a bad update is skipped (``skip_bad_updates``),
        drop every gradient when the loss, a gradient or an extra tensor is not finite, so that the step
        changes nothing."""
        self._grad_norm = grad_norm
        loss = self._loss
        if not self._skipping or loss is None:
            return
        # the extra tensors too: the forward pass moved the batch-norm statistics, the step will not
        ok = self._loss_and_gradients_finite(loss, grad_norm) & _finite(self.extra, loss.device)
        self._checked, self._skipped = ok, not bool(ok)
        if self._skipped:
            for param in self.params:
                param.grad = None

    def _loss_and_gradients_finite(self, loss: Tensor, grad_norm: Tensor | None) -> Tensor:
        grads = [p.grad for p in self.params if p.grad is not None] if grad_norm is None else []
        ok = torch.isfinite(loss.detach()).all() & _finite(grads, loss.device)
        return ok if grad_norm is None else ok & torch.isfinite(grad_norm).all().to(ok.device)

    def commit(self, staged: Tensor | None = None) -> Tensor:
        """Keep the update if its loss, gradients, weights and extra tensors are finite (and ``staged``, a
        value computed from a staged state, such as :meth:`FPTT.stage`'s); else restore them. Returns
        the flag (a bool scalar tensor)."""
        checked, self._checked = self._checked, None
        loss, grad_norm, self._loss, self._grad_norm = self._loss, self._grad_norm, None, None
        if loss is None:
            raise RuntimeError("NonFiniteGuard.commit without expect(loss): the update's loss is unknown")
        if checked is not None and self._skipped:  # skipped by precheck: only the buffers moved
            self._restore()
            self._count(checked)
            return checked
        weights = self.params if staged is None else self._not_staged
        ok = (checked if checked is not None else self._loss_and_gradients_finite(loss, grad_norm)) & \
            _finite(weights + self.extra, loss.device)
        if staged is not None:
            ok = ok & torch.isfinite(staged).all().to(ok.device)
        if not self._skipping:
            self._undo_if_bad(ok)
        elif not bool(ok):
            self._restore()
            raise NonFiniteError(
                "after the optimizer step a weight, the optimizer's or FPTT's state or a batch-norm statistic is "
                "not finite: this cannot be undone here (on the CPU the guard checks the loss and gradients before "
                "a step instead of copying the weights: docs/troubleshooting.md). Lower the learning rate (is the "
                "scheduler's finite?); every checkpoint written holds finite weights.")
        self._count(ok)
        return ok

    def _undo_if_bad(self, ok: Tensor) -> None:
        """Put the copy back unless ``ok``: read on the CPU, with ``torch.where`` elsewhere."""
        if self.read_cpu_flag and self._on_cpu and ok.device.type == "cpu":
            if not bool(ok):
                self._restore()
        else:
            for new, old in zip(self._watched, self._buffers):
                new.copy_(torch.where(ok.to(new.device), new, old))
        fresh = [p for p in self.params if p in self.optimizer.state and id(p) not in self._stateful]
        if fresh and not bool(ok):  # first step of these parameters: their new state is dropped (a sync)
            for param in fresh:
                del self.optimizer.state[param]

    def _restore(self) -> None:
        if self._watched:
            torch._foreach_copy_(self._watched, self._buffers)

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
                "Lower the learning rate, check the scheduler and the input data (docs/troubleshooting.md); "
                "model.init_args.max_nonfinite_steps sets this limit (0: never stop).")
