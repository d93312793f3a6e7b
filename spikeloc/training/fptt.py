"""FPTT: the running-average regulariser of Forward Propagation Through Time (the paper;
README "Training: FPTT and BPTT").

Per parameter tensor ``W`` it keeps a running average ``W_bar`` (starts at ``W``) and a
Lagrange-like trace ``lam`` (starts at 0). Each truncated update minimises

    loss_t = l_t(W) + R(W),   R(W) = -<W, lam> + (alpha / 2) * ||W - W_bar||^2

and after ``optimizer.step()`` calls :meth:`FPTT.update`:

    lam   <- lam - a * (W - W_bar)
    W_bar <- (1 - beta) * W_bar + beta * W - (beta / a) * lam

with ``a = update_alpha``, which is ``alpha`` unless set: the reference detection script uses
alpha 0.1 in the penalty and 0.5 in these updates (its classification scripts use one alpha).

``W_bar`` and ``lam`` are each one flat buffer (``running`` and ``trace`` are views of it laid out like
the parameters), so every formula is a handful of kernels over all parameters at once (:func:`advance`)
and nothing is read back to the host. With ``backend="cpu_kernels"`` the same update runs as one
operator (``torch.ops.spikeloc.fptt_stage``, ``spikeloc/kernels/fptt.cpp``) in one pass over memory.
On the CPU an update is a transaction (:meth:`FPTT.stage`, :meth:`FPTT.accept`): the new state goes to a
spare pair of buffers, which become the state only when the step is kept, and the same pass computes the
next step's penalty value and gradient (``W`` does not move in between), so the non-finite guard copies
no FPTT state and the penalty reads nothing again.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import Tensor

from spikeloc.neurons.backend import BackendError

FPTTBackend = Literal["eager", "cpu_kernels"]
Penalty = tuple[Tensor, list[Tensor]]  # (value, its gradient per parameter)


def _dense(t: Tensor) -> bool:
    """Whether ``t`` fills exactly ``t.numel()`` consecutive elements (contiguous, channels-last, transposed)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return t.numel() == 0
        expected *= size
    return True


def _memory_flat(t: Tensor) -> Tensor:
    """A flat view of ``t``'s elements in memory order (``t`` dense), or a copy in index order."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset()) if _dense(t) else t.reshape(-1)


def _views(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Consecutive ranges of ``flat`` as tensors laid out like ``params`` (a dense one in its own strides,
    else contiguous): each parameter's elements in its memory order."""
    views, start = [], 0
    for p in params:
        stride = p.stride() if _dense(p) else torch.empty(p.shape, device="meta").stride()
        views.append(flat.as_strided(p.shape, stride, flat.storage_offset() + start))
        start += p.numel()
    return views


def advance(w: Tensor, bar: Tensor, lam: Tensor, new_bar: Tensor, new_lam: Tensor, alpha: float, beta: float,
            update_alpha: float) -> None:
    """The update on flat tensors ``[N]``: ``new_lam`` and ``new_bar`` (``lam`` and ``bar`` themselves: in place)
    from the weights ``w`` and the state."""
    difference = torch.sub(w, bar) if new_lam is lam else torch.sub(w, bar, out=new_lam)
    torch.add(lam, difference, alpha=-update_alpha, out=new_lam)
    torch.mul(bar, 1.0 - beta, out=new_bar)
    new_bar.add_(w, alpha=beta)
    new_bar.add_(new_lam, alpha=-beta / update_alpha)


def penalty_terms(weights: list[Tensor], w: Tensor, bars: list[Tensor], lam: Tensor, lams: list[Tensor],
                  alpha: float) -> Penalty:
    """``(R(W), [alpha (W - W_bar) - lam per weight])`` from the weights (and ``w``, them laid end to end) and
    the state (``lam`` flat; ``bars``, ``lams`` per weight)."""
    grads = torch._foreach_sub(weights, bars)
    value = 0.5 * alpha * torch.stack(torch._foreach_norm(grads)).square().sum() - torch.dot(w, lam)
    torch._foreach_mul_(grads, alpha)
    torch._foreach_sub_(grads, lams)
    return value, grads


class _Penalty(torch.autograd.Function):
    """``R(W)`` summed over tensors, with its closed-form gradient ``alpha (W - W_bar) - lam``."""

    @staticmethod
    def forward(ctx, fptt: "FPTT", *params: Tensor) -> Tensor:
        ctx.save_for_backward(*params)  # saved_tensors in backward checks W was not changed in place
        value, ctx.grads = fptt.next_penalty()
        ctx.staging = fptt._staging()
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        _, grads, ctx.grads = ctx.saved_tensors, ctx.grads, None
        if not ctx.staging or float(grad) != 1.0:  # staged on the CPU: reading the scalar stalls nothing
            grads = torch._foreach_mul(grads, grad)
        return (None, *(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:])))


class FPTT:
    """Running average and trace over a list of parameters (one device, one dtype).

    Args:
        params: the trainable parameters (their order defines the state layout).
        alpha: regulariser strength (reference 0.1).
        beta: running-average rate (reference 0.5).
        update_alpha: the alpha of the trace and running-average updates (``None``: ``alpha``;
            the reference detection run: 0.5 with ``alpha=0.1``).
        backend: ``eager`` (:func:`advance`) or ``cpu_kernels`` (the same update as one CPU operator, float32
            parameters only; its sums round differently); :class:`BackendError` where it cannot run.
    """

    def __init__(self, params: Iterable[Tensor], alpha: float = 0.1, beta: float = 0.5,
                 update_alpha: float | None = None, backend: FPTTBackend = "eager") -> None:
        update_alpha = alpha if update_alpha is None else update_alpha
        if alpha <= 0 or update_alpha <= 0 or not 0 < beta <= 1:
            raise ValueError(f"FPTT needs alpha > 0, update_alpha > 0 and 0 < beta <= 1, got alpha={alpha}, "
                             f"update_alpha={update_alpha}, beta={beta}")
        self.params = [p for p in params if p.requires_grad]
        if len({(p.device, p.dtype) for p in self.params}) > 1:
            raise ValueError("FPTT keeps one flat state: every parameter must have one device and dtype")
        self.alpha, self.beta, self.update_alpha = float(alpha), float(beta), float(update_alpha)
        self.backend = _check_backend(backend, self.params)
        weights = [p.detach() for p in self.params]
        like = weights[0] if weights else torch.empty(0)
        self._state = self._new_state(like)
        with torch.no_grad():
            torch._foreach_copy_(self.running, weights)
        self._spare: tuple | None = None  # the staged state's buffers (CPU)
        self._staged: Penalty | None = None  # the penalty of the staged state, until accept
        self._ahead: Penalty | None = None  # the penalty of the accepted state, for the next penalty()
        self._weights: Tensor | None = None  # a flat copy of the weights (eager backend)

    def _new_state(self, like: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Zeroed flat ``(W_bar, lam)`` buffers and their views laid out like the parameters."""
        total = sum(p.numel() for p in self.params)
        bar, lam = like.new_zeros(total), like.new_zeros(total)
        return bar, lam, _views(bar, self.params), _views(lam, self.params)

    @property
    def running(self) -> list[Tensor]:
        """``W_bar`` per parameter (views of one flat buffer)."""
        return self._state[2]

    @property
    def trace(self) -> list[Tensor]:
        """``lam`` per parameter (views of one flat buffer)."""
        return self._state[3]

    def _staging(self) -> bool:
        """Whether updates are staged (on the CPU, where the guard reads its flag at once)."""
        return bool(self.params) and self.params[0].device.type == "cpu"

    def __getstate__(self) -> dict:  # spare buffers and the next penalty are made again on use
        return {**self.__dict__, "_spare": None, "_staged": None, "_ahead": None, "_weights": None}

    def _flat_weights(self) -> Tensor:
        """The weights in the state's layout, gathered into one buffer allocated once."""
        if self._weights is None:
            self._weights = self._state[0].new_empty(self._state[0].shape)
        return torch.cat([_memory_flat(p.detach()) for p in self.params], out=self._weights)

    def _advance(self, new_bar: Tensor, new_lam: Tensor, penalty: bool = True) -> Penalty | None:
        """The update into ``new_bar`` and ``new_lam``, and with ``penalty`` the next penalty."""
        bar, lam = self._state[:2]
        if self.backend == "cpu_kernels":
            grads, value = torch.ops.spikeloc.fptt_stage([p.detach() for p in self.params], bar, lam, new_bar,
                                                         new_lam, self.alpha, self.beta, self.update_alpha)
            return value.float(), grads
        w = self._flat_weights()
        advance(w, bar, lam, new_bar, new_lam, self.alpha, self.beta, self.update_alpha)
        if not penalty:
            return None
        views = self._spare if new_bar is self._spare[0] else self._state
        return penalty_terms([p.detach() for p in self.params], w, views[2], new_lam, views[3], self.alpha)

    @torch.no_grad()
    def next_penalty(self) -> Penalty:
        """``(R(W), its gradient per parameter)`` for the current weights: the accepted update's, handed over
        once (nothing but FPTT may change the weights or the state in between), else computed."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            return ahead
        if not self.params:
            return torch.zeros(()), []
        weights, (bar, lam, bars, lams) = [p.detach() for p in self.params], self._state
        if self.backend == "cpu_kernels":  # the operator's roundings, as its updates hand over
            grads, value = torch.ops.spikeloc.fptt_penalty(weights, bar, lam, self.alpha)
            return value.float(), grads
        return penalty_terms(weights, self._flat_weights(), bars, lam, lams, self.alpha)

    def penalty(self) -> Tensor:
        """``R(W)`` as a scalar tensor to add to the step loss (differentiable in ``W``)."""
        return _Penalty.apply(self, *self.params)

    def update(self) -> None:
        """Advance ``lam`` and ``W_bar``; call right after ``optimizer.step()``."""
        self.stage()
        self.accept(True)

    def in_place_state(self) -> list[Tensor]:
        """The state tensors :meth:`stage` changes in place (none where it stages into spare buffers): what a
        guard that undoes bad updates must copy."""
        return [] if self._staging() else self.running + self.trace

    @torch.no_grad()
    def stage(self) -> Tensor | None:
        """Compute the update; call right after ``optimizer.step()``, then :meth:`accept`.

        On the CPU the new ``lam`` and ``W_bar`` go to the spare buffers, with the next penalty (its value is
        finite only when the weights and all of the new state are) computed in the same pass; that value is
        returned. Elsewhere the state is updated in place and ``None`` is returned.
        """
        self._ahead = None  # the weights moved
        if not self.params:
            return None
        if not self._staging():
            self._advance(*self._state[:2], penalty=False)
            return None
        if self._spare is None:
            self._spare = self._new_state(self._state[0])
        self._staged = self._advance(*self._spare[:2])
        return self._staged[0]

    def accept(self, keep: bool | Tensor) -> None:
        """Make the staged update the state if ``keep`` (a CPU flag is read), else drop it."""
        staged, self._staged = self._staged, None
        if staged is not None and bool(keep):
            self._state, self._spare = self._spare, self._state
            self._ahead = staged

    @torch.no_grad()
    def consolidate(self) -> None:
        """Copy the running average into the weights (the reference does it at epoch end)."""
        torch._foreach_copy_([p.detach() for p in self.params], self.running)
        self._ahead = None

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "update_alpha": self.update_alpha,
                "running": list(self.running), "trace": list(self.trace)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; tensors are copied onto this object's devices."""
        for key in ("running", "trace"):
            saved, mine = state[key], getattr(self, key)
            if len(saved) != len(mine):
                raise ValueError(f"FPTT state '{key}' holds {len(saved)} tensors, the model has {len(mine)} "
                                 "trainable parameters: the checkpoint belongs to another architecture")
            for index, (src, dst) in enumerate(zip(saved, mine)):
                if src.shape != dst.shape:
                    raise ValueError(f"FPTT state '{key}[{index}]' has shape {tuple(src.shape)}, "
                                     f"parameter has {tuple(dst.shape)}")
            torch._foreach_copy_(mine, [t.to(d.device, d.dtype) for t, d in zip(saved, mine)])
        self.alpha, self.beta = float(state["alpha"]), float(state["beta"])
        self.update_alpha = float(state.get("update_alpha", self.alpha))
        self._ahead = None


def _check_backend(backend: str, params: list[Tensor]) -> str:
    """``backend`` if it can run on ``params``, else :class:`BackendError` naming why."""
    if backend not in ("eager", "cpu_kernels"):
        raise BackendError(f"FPTT backend must be 'eager' or 'cpu_kernels', got {backend!r}")
    if backend == "cpu_kernels" and params:
        if params[0].device.type != "cpu" or params[0].dtype != torch.float32:
            raise BackendError(f"FPTT backend 'cpu_kernels' runs float32 CPU parameters, these are "
                               f"{params[0].dtype} on {params[0].device}; use eager")
        if not all(_dense(p) for p in params):
            raise BackendError("FPTT backend 'cpu_kernels' needs every parameter dense in memory; use eager")
        from spikeloc import kernels
        try:
            kernels.load()
        except kernels.KernelsUnavailable as error:
            raise BackendError(f"FPTT backend 'cpu_kernels' cannot run here: {error}; use eager") from error
    return backend
