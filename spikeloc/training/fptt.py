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

from typing import Iterable, Sequence

import torch
from torch import Tensor


CPU_BLOCK = 1 << 18
"""Elements per block on the CPU: the tensors are cut into blocks this large and every formula runs
block by block, so each block's ``W``, ``W_bar``, ``lam`` and ``W - W_bar`` (in a scratch buffer of one
block, allocated once) stay in the cache between the kernels of a formula instead of going through
memory once per kernel, and no temporary as large as the model is allocated (page faults). Other
devices take all tensors as one block (their ``_foreach`` kernels already fuse the tensor list, and
their allocator caches temporaries)."""

Piece = tuple[int, int, int]  # (tensor index, first element, number of elements)


def plan_blocks(numels: list[int], flat: list[bool], block: int | None) -> list[list[Piece]]:
    """Group consecutive tensors, cut into pieces of at most ``block`` elements where ``flat`` (only a
    contiguous tensor can be cut), into blocks of about ``block`` elements (``None``: one block)."""
    blocks: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for index, (numel, cuttable) in enumerate(zip(numels, flat)):
        cut = block if block and cuttable else max(numel, 1)
        for start in range(0, max(numel, 1), cut):
            piece = (index, start, min(cut, numel - start))
            if current and block and size + piece[2] > block:
                blocks.append(current)
                current, size = [], 0
            current.append(piece)
            size += piece[2]
    return blocks + [current] if current else blocks


def _pieces(tensors: Sequence[Tensor], block: list[Piece]) -> list[Tensor]:
    """The views of ``tensors`` that ``block`` names (a whole tensor keeps its shape)."""
    return [tensors[i] if n == tensors[i].numel() else tensors[i].view(-1).narrow(0, start, n)
            for i, start, n in block]


class _Blocks:
    """The views of parameters, running average and trace for every block, and the block's scratch
    (``None``: one block, temporaries allocated per call)."""

    def __init__(self, params: list[Tensor], running: list[Tensor], trace: list[Tensor], block: int | None) -> None:
        flat = [p.is_contiguous() and w.is_contiguous() and lam.is_contiguous()
                for p, w, lam in zip(params, running, trace)]
        self.plan = plan_blocks([p.numel() for p in params], flat, block)
        self.views = [tuple(_pieces(t, b) for t in (params, running, trace)) for b in self.plan]
        self.scratch: list[list[Tensor] | None] = [None] * len(self.plan)
        if block is not None and params:
            buffer = params[0].new_empty(max(sum(n for _, _, n in b) for b in self.plan))
            for index, (w, _, _) in enumerate(self.views):
                offsets = [0]
                for piece in w:
                    offsets.append(offsets[-1] + piece.numel())
                self.scratch[index] = [buffer.narrow(0, o, p.numel()).view(p.shape) for o, p in zip(offsets, w)]

    def __iter__(self):
        """``(w, w_bar, lam, w - w_bar)`` per block (the difference in the scratch, or newly allocated)."""
        for (w, w_bar, lam), scratch in zip(self.views, self.scratch):
            if scratch is None:
                yield w, w_bar, lam, torch._foreach_sub(w, w_bar)
            else:
                torch._foreach_copy_(scratch, w)
                torch._foreach_sub_(scratch, w_bar)
                yield w, w_bar, lam, scratch


class _Penalty(torch.autograd.Function):
    """``R(W)`` summed over tensors, with its closed-form gradient ``alpha (W - W_bar) - lam``."""

    @staticmethod
    def forward(ctx, fptt: "FPTT", *params: Tensor) -> Tensor:
        ctx.fptt = fptt
        ctx.save_for_backward(*params)
        squares, dots = [], []
        for w, _, lam, difference in fptt.blocks():
            squares += torch._foreach_norm(difference)
            dots += [torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(w, lam)]
        return 0.5 * fptt.alpha * torch.stack(squares).square().sum() - torch.stack(dots).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        fptt, params = ctx.fptt, ctx.saved_tensors  # saved_tensors: checks W was not changed in place
        blocks = fptt.blocks()
        grads: list[Tensor | None] = [None] * len(params)
        for plan, (w, w_bar, lam) in zip(blocks.plan, blocks.views):
            if blocks.scratch[0] is None:  # one block: the gradients are the new tensors
                pieces = torch._foreach_sub(w, w_bar)
                grads = list(pieces)
            else:  # the gradients are allocated whole and computed block by block in place
                for index, _, _ in plan:
                    if grads[index] is None:
                        grads[index] = torch.empty_like(params[index])
                pieces = _pieces(grads, plan)
                torch._foreach_copy_(pieces, w)
                torch._foreach_sub_(pieces, w_bar)
            torch._foreach_mul_(pieces, fptt.alpha)
            torch._foreach_sub_(pieces, lam)
            torch._foreach_mul_(pieces, grad)
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:])]
        return (None, *grads)


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
        self.block: int | None = CPU_BLOCK  # elements per block on the CPU (None: one block)
        self._blocks: tuple[tuple, _Blocks] | None = None

    def blocks(self) -> _Blocks:
        """The blocks the formulas run over (see :data:`CPU_BLOCK`), planned again when a tensor moves."""
        tensors = self.params + self.running + self.trace
        key = tuple((t.data_ptr(), t.stride()) for t in tensors) + (self.block,)
        if self._blocks is None or self._blocks[0] != key:
            cpu = all(t.device.type == "cpu" for t in tensors) and len({t.dtype for t in tensors}) <= 1
            params = [p.detach() for p in self.params]
            self._blocks = key, _Blocks(params, self.running, self.trace, self.block if cpu else None)
        return self._blocks[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_blocks": None}  # views and scratch are rebuilt on use

    def penalty(self) -> Tensor:
        """``R(W)`` as a scalar tensor to add to the step loss (differentiable in ``W``)."""
        return _Penalty.apply(self, *self.params)

    @torch.no_grad()
    def update(self) -> None:
        """Advance ``lam`` and ``W_bar``; call right after ``optimizer.step()``."""
        for w, w_bar, lam, difference in self.blocks():
            torch._foreach_add_(lam, difference, alpha=-self.update_alpha)
            torch._foreach_mul_(w_bar, 1.0 - self.beta)
            torch._foreach_add_(w_bar, w, alpha=self.beta)
            torch._foreach_add_(w_bar, lam, alpha=-self.beta / self.update_alpha)

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
