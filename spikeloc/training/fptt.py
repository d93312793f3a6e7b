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
All tensors move together through ``torch._foreach_*`` kernels and nothing is read back
to the host, so the per-step overhead stays a handful of fused launches.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class _Penalty(torch.autograd.Function):
    """``R(W)`` summed over tensors, with its closed-form gradient ``alpha (W - W_bar) - lam``."""

    @staticmethod
    def forward(ctx, alpha: float, running: list[Tensor], trace: list[Tensor], *params: Tensor) -> Tensor:
        ctx.alpha, ctx.running, ctx.trace = alpha, running, trace
        ctx.save_for_backward(*params)
        squares = torch.stack(torch._foreach_norm(torch._foreach_sub(params, running))).square().sum()
        dots = torch.stack([torch.dot(w.reshape(-1), lam.reshape(-1)) for w, lam in zip(params, trace)]).sum()
        return 0.5 * alpha * squares - dots

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        grads = torch._foreach_sub(ctx.saved_tensors, ctx.running)
        torch._foreach_mul_(grads, ctx.alpha)
        torch._foreach_sub_(grads, ctx.trace)
        torch._foreach_mul_(grads, grad)
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[3:])]
        return (None, None, None, *grads)


class FPTT:
    """Running average and trace over a list of parameters.

    Args:
        params: the trainable parameters (their order defines the state layout).
        alpha: regulariser strength (reference 0.1).
        beta: running-average rate (reference 0.5).
        update_alpha: the alpha of the trace and running-average updates (``None``: ``alpha``;
            the reference detection run: 0.5 with ``alpha=0.1``).
    """

    def __init__(self, params: Iterable[Tensor], alpha: float = 0.1, beta: float = 0.5,
                 update_alpha: float | None = None) -> None:
        update_alpha = alpha if update_alpha is None else update_alpha
        if alpha <= 0 or update_alpha <= 0 or not 0 < beta <= 1:
            raise ValueError(f"FPTT needs alpha > 0, update_alpha > 0 and 0 < beta <= 1, got alpha={alpha}, "
                             f"update_alpha={update_alpha}, beta={beta}")
        self.params = [p for p in params if p.requires_grad]
        self.alpha, self.beta, self.update_alpha = float(alpha), float(beta), float(update_alpha)
        with torch.no_grad():
            self.running = [p.detach().clone() for p in self.params]
            self.trace = [torch.zeros_like(p) for p in self.params]

    def penalty(self) -> Tensor:
        """``R(W)`` as a scalar tensor to add to the step loss (differentiable in ``W``)."""
        return _Penalty.apply(self.alpha, self.running, self.trace, *self.params)

    @torch.no_grad()
    def update(self) -> None:
        """Advance ``lam`` and ``W_bar``; call right after ``optimizer.step()``."""
        params = [p.detach() for p in self.params]
        torch._foreach_add_(self.trace, torch._foreach_sub(params, self.running), alpha=-self.update_alpha)
        torch._foreach_mul_(self.running, 1.0 - self.beta)
        torch._foreach_add_(self.running, params, alpha=self.beta)
        torch._foreach_add_(self.running, self.trace, alpha=-self.beta / self.update_alpha)

    @torch.no_grad()
    def consolidate(self) -> None:
        """Copy the running average into the weights (the reference does it at epoch end)."""
        torch._foreach_copy_([p.detach() for p in self.params], self.running)

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
