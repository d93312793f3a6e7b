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
to the host, so the per-step overhead stays a handful of fused launches; on the CPU the kernels of
each formula run block by block (:data:`CPU_BLOCK`), which gives the same numbers with fewer trips
through memory. There an update is also a transaction (:meth:`FPTT.stage`, :meth:`FPTT.accept`): the
new ``lam`` and ``W_bar`` go to a second pair of buffers, which become the state only when the step is
kept, and the same pass over the blocks computes the next step's penalty value (``W`` does not move in
between), so the penalty's forward reads nothing and the non-finite guard copies no FPTT state. With
``compile`` (the loop's ``compile_step``) the CPU runs the staged update and the penalty's gradient as
two compiled functions instead, one fused loop per tensor and one call each per update; the state is
then a tensor per parameter and each update stages new ones. With ``native`` the staged update, the next
penalty value and its gradient are one call of a hand-written CPU kernel over the flat state
(``spikeloc/kernels/fptt.c``): the compiled path's single pass without its compile time.
"""
from __future__ import annotations

import ctypes
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .. import kernels

CPU_BLOCK = 1 << 18
"""Elements per block on the CPU. There the running average and the trace are views of one flat
buffer each, and every formula runs block by block over it: a tensor larger than a block is cut into
blocks, smaller ones are gathered (one copy) into blocks of about this size. So the kernels of a
formula find each block's ``W``, ``W_bar``, ``lam`` and ``W - W_bar`` (in a scratch of one block,
allocated once) in the cache instead of going through memory once per kernel, run once per block
rather than once per tensor, and allocate no temporary as large as the model (page faults). Other
devices run each formula's ``_foreach`` kernels over all tensors at once (they fuse the tensor list
and their allocator caches temporaries)."""

Piece = tuple[int, int, int]  # (tensor index, first element, number of elements)


def plan_blocks(numels: list[int], flat: list[bool], block: int) -> list[list[Piece]]:
    """Blocks of pieces ``(tensor, first element, count)``: a tensor of more than ``block`` elements
    that is ``flat`` (contiguous) is cut into blocks of one piece each; the other tensors, whole, are
    grouped into blocks of at most ``block`` elements (or one tensor). The pieces follow each other
    in order, so every block is one range of the tensors laid end to end."""
    blocks: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for index, (numel, cuttable) in enumerate(zip(numels, flat)):
        if numel > block and cuttable:
            if current:
                blocks.append(current)
                current, size = [], 0
            blocks += [[(index, start, min(block, numel - start))] for start in range(0, numel, block)]
            continue
        if current and size + numel > block:
            blocks.append(current)
            current, size = [], 0
        current.append((index, 0, numel))
        size += numel
    return blocks + [current] if current else blocks


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


def _layout(like: Tensor) -> tuple[int, ...]:
    """The strides FPTT's state gives a tensor like ``like``: its own when dense, else contiguous ones."""
    return like.stride() if _dense(like) else torch.empty(like.shape, device="meta").stride()


def _laid_like(flat: Tensor, like: Tensor) -> Tensor:
    """``flat`` (a 1-D range) as a tensor shaped like ``like``, in the layout :func:`_layout` gives it."""
    return flat.as_strided(like.shape, _layout(like), flat.storage_offset())


def _flat_views(params: list[Tensor], values: list[Tensor] | None) -> list[Tensor]:
    """Tensors laid out like ``params`` (channels-last stays channels-last), consecutive in one buffer,
    holding ``values`` (or 0)."""
    buffer = params[0].new_zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
    views, start = [], 0
    for index, p in enumerate(params):
        views.append(_laid_like(buffer.narrow(0, start, p.numel()), p))
        if values is not None:
            views[-1].copy_(values[index])
        start += p.numel()
    return views


class _Blocks:
    """The CPU plan: per block, its range of the flat running average and trace, where its ``W`` is
    read from (a view, or the whole tensors gathered into a scratch) and where its gradient goes; also
    the flat buffers themselves and whether every ``W`` is dense (what the native kernel needs)."""

    def __init__(self, params: list[Tensor], running: Tensor, trace: Tensor, block: int) -> None:
        self.params, self.running, self.trace = params, running, trace
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        dense = [_dense(p) for p in params]
        self.dense = all(dense)
        plans = plan_blocks([p.numel() for p in params], dense, block)
        size = max(sum(n for _, _, n in plan) for plan in plans)  # above block: a tensor that cannot be cut
        self.scratch_w, self.scratch_d = running.new_empty(size), running.new_empty(size)
        self.blocks = []
        for plan in plans:
            first, start, _ = plan[0]
            low, n = offsets[first] + start, sum(count for _, _, count in plan)
            direct = len(plan) == 1 and _dense(params[first])  # W and the gradient are views
            pieces = [] if direct else [_laid_like(self.scratch_d.narrow(0, offsets[i] - low, params[i].numel()),
                                                   params[i]) for i, _, _ in plan]
            self.blocks.append((plan, running.narrow(0, low, n), trace.narrow(0, low, n), direct, pieces))

    def weights(self, plan: list[Piece], direct: bool, n: int) -> Tensor:
        """The block's ``W`` as one flat tensor."""
        if direct:
            index, start, _ = plan[0]
            return _memory_flat(self.params[index]).narrow(0, start, n)
        return torch.cat([_memory_flat(self.params[index]) for index, _, _ in plan], out=self.scratch_w.narrow(0, 0, n))

    def penalty_gradients(self, alpha: float, grad: Tensor) -> list[Tensor]:
        """``grad * (alpha (W - W_bar) - lam)`` per parameter, block by block."""
        grads = [torch.empty_like(p) for p in self.params]
        for plan, w_bar, lam, direct, pieces in self.blocks:
            n = w_bar.numel()
            w = self.weights(plan, direct, n)
            index, start, _ = plan[0]
            out = _memory_flat(grads[index]).narrow(0, start, n) if direct else self.scratch_d.narrow(0, 0, n)
            torch.sub(w, w_bar, out=out)
            out.mul_(alpha)
            out.sub_(lam)
            out.mul_(grad)
            if not direct:
                torch._foreach_copy_([grads[i] for i, _, _ in plan], pieces)
        return grads

    def __iter__(self):
        """``(w, w_bar, lam, w - w_bar)`` per block, all flat (the difference in the scratch)."""
        for plan, w_bar, lam, direct, _ in self.blocks:
            w = self.weights(plan, direct, w_bar.numel())
            yield w, w_bar, lam, torch.sub(w, w_bar, out=self.scratch_d.narrow(0, 0, w_bar.numel()))


class _Penalty(torch.autograd.Function):
    """``R(W)`` summed over tensors, with its closed-form gradient ``alpha (W - W_bar) - lam``."""

    @staticmethod
    def forward(ctx, fptt: "FPTT", *params: Tensor) -> Tensor:
        ctx.fptt, ctx.gradients = fptt, None
        ctx.save_for_backward(*params)
        if fptt._next_penalty is not None and fptt._next_penalty[2] == fptt._penalty_key():
            # computed by the accepted update (stage), nothing moved since; the gradient is used once
            value, ctx.gradients, key = fptt._next_penalty
            fptt._next_penalty = value, None, key
            return value.clone()
        blocks = fptt.blocks()
        if blocks is None:
            squares = torch._foreach_norm(torch._foreach_sub(params, fptt.running))
            dots = [torch.dot(w.reshape(-1), lam.reshape(-1)) for w, lam in zip(params, fptt.trace)]
        else:
            squares, dots = [], []
            for w, _, lam, difference in blocks:
                squares.append(torch.linalg.vector_norm(difference))
                dots.append(torch.dot(w, lam))
        return 0.5 * fptt.alpha * torch.stack(squares).square().sum() - torch.stack(dots).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        fptt, params = ctx.fptt, ctx.saved_tensors  # saved_tensors: checks W was not changed in place
        grads, ctx.gradients = ctx.gradients, None
        if grads is not None:  # staged on the CPU: reading the scalar stalls nothing
            grads = grads if float(grad) == 1.0 else torch._foreach_mul(grads, grad)
        else:
            grads = fptt._run_compiled(_penalty_gradients, [p.detach() for p in params], fptt.running,
                                       fptt.trace, fptt.alpha, grad)
        if grads is None:
            blocks = fptt.blocks()
            grads = blocks.penalty_gradients(fptt.alpha, grad) if blocks is not None else \
                _penalty_gradients(list(params), fptt.running, fptt.trace, fptt.alpha, grad)
        grads = [g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:])]
        return (None, *grads)


def _flat_base(views: list[Tensor], params: list[Tensor]) -> Tensor | None:
    """The flat buffer ``views`` are consecutive contiguous views of (shaped like ``params``), or None."""
    if not views or len(views) != len(params):
        return None
    start = views[0].data_ptr()
    for view, p in zip(views, params):
        if view.shape != p.shape or view.dtype != p.dtype or view.stride() != _layout(p) or \
                (view.numel() and view.data_ptr() != start):  # an empty tensor may point anywhere
            return None
        start += view.numel() * view.element_size()
    try:
        return views[0].as_strided((sum(p.numel() for p in params),), (1,), views[0].storage_offset())
    except RuntimeError:  # not one buffer after all
        return None


def warn_compile_failed(what: str, fallback: str, error: Exception) -> None:
    """One warning that ``torch.compile`` failed for ``what``, naming the error's first line (inductor's
    can run to pages) and what runs instead."""
    message = (str(error).strip().splitlines() or [""])[0][:300]
    warnings.warn(f"{what}: torch.compile failed ({type(error).__name__}: {message}); running {fallback}",
                  RuntimeWarning, stacklevel=3)


def _staged_update(w: list[Tensor], w_bar: list[Tensor], lam: list[Tensor], alpha: float, beta: float,
                   update_alpha: float) -> tuple[list[Tensor], list[Tensor], Tensor, list[Tensor]]:
    """:meth:`FPTT.stage`'s equations tensor by tensor, into new tensors: ``(W_bar', lam', the next penalty
    value, its gradient alpha (W - W_bar') - lam')``. Compiled (``compile``), each tensor is one loop that
    reads ``W``, ``W_bar`` and ``lam`` once."""
    bars, lams, values, grads = [], [], [], []
    for x, x_bar, x_lam in zip(w, w_bar, lam):
        new_lam = torch.add(x_lam, x - x_bar, alpha=-update_alpha)
        new_bar = torch.add(torch.add(x_bar * (1.0 - beta), x, alpha=beta), new_lam, alpha=-beta / update_alpha)
        difference = x - new_bar
        values.append(torch.sum(0.5 * alpha * difference ** 2 - x * new_lam))
        grads.append(alpha * difference - new_lam)
        bars.append(new_bar)
        lams.append(new_lam)
    return bars, lams, torch.stack(values).sum(), grads


def _penalty_gradients(w: list[Tensor], w_bar: list[Tensor], lam: list[Tensor], alpha: float,
                       grad: Tensor) -> list[Tensor]:
    """``grad * (alpha (W - W_bar) - lam)`` per tensor: the penalty's gradient over whole tensor lists."""
    grads = torch._foreach_sub(w, w_bar)
    torch._foreach_mul_(grads, alpha)
    torch._foreach_sub_(grads, lam)
    torch._foreach_mul_(grads, grad)
    return grads


class FPTT:
    """Running average and trace over a list of parameters.

    Args:
        params: the trainable parameters (their order defines the state layout).
        alpha: regulariser strength (reference 0.1).
        beta: running-average rate (reference 0.5).
        update_alpha: the alpha of the trace and running-average updates (``None``: ``alpha``;
            the reference detection run: 0.5 with ``alpha=0.1``).
        compile: on the CPU, run the staged update and the penalty's gradient through ``torch.compile``
            (a dict: its arguments), one call each per update, instead of block by block: each tensor is
            one fused loop, and the state is a tensor per parameter. The update also writes the next
            penalty's gradient (kept until the next backward: one more copy of the weights in memory) instead
            of reading the weights and the state again for it. The first update compiles them; if
            compiling fails, one warning names the error and FPTT runs blocked from then on.
        native: on the CPU with float32 parameters, run the staged update as one hand-written kernel
            (:mod:`spikeloc.kernels`) that, like the compiled path, also writes the next penalty's value
            and gradient; elsewhere, or without a C compiler (one warning), FPTT runs as without it.
            ``compile`` takes precedence.
    """

    def __init__(self, params: Iterable[Tensor], alpha: float = 0.1, beta: float = 0.5,
                 update_alpha: float | None = None, compile: bool | dict[str, Any] = False,
                 native: bool = False) -> None:
        update_alpha = alpha if update_alpha is None else update_alpha
        if alpha <= 0 or update_alpha <= 0 or not 0 < beta <= 1:
            raise ValueError(f"FPTT needs alpha > 0, update_alpha > 0 and 0 < beta <= 1, got alpha={alpha}, "
                             f"update_alpha={update_alpha}, beta={beta}")
        self.params = [p for p in params if p.requires_grad]
        self.alpha, self.beta, self.update_alpha = float(alpha), float(beta), float(update_alpha)
        self.block: int | None = CPU_BLOCK  # elements per block on the CPU (None: no blocks)
        self.compile, self.native = compile, native
        self._compiled: dict[Callable, Callable] = {}  # formula -> its compiled form
        with torch.no_grad():
            weights = [p.detach() for p in self.params]
            if self._flat_device() and not compile:
                self.running, self.trace = _flat_views(weights, weights), _flat_views(weights, None)
            else:
                self.running = [p.clone() for p in weights]
                self.trace = [torch.zeros_like(p) for p in weights]
        self._blocks: dict[tuple, _Blocks | None] = {}  # plans of the state and of its spare
        self._spare: tuple[list[Tensor], list[Tensor]] | None = None  # CPU: the staged state
        self._staged: Tensor | None = None  # the penalty value of the update staged in the spare buffers
        self._staged_gradients: list[Tensor] | None = None  # and its gradient, where compiled
        # (value, gradient or None, the _penalty_key() they hold for) of the next penalty
        self._next_penalty: tuple[Tensor, list[Tensor] | None, tuple] | None = None

    def _compiling(self) -> bool:
        """Whether the staged update and the penalty's gradient run compiled (``compile``, on the CPU)."""
        return bool(self.compile) and self._flat_device()

    def _flat_device(self) -> bool:
        """Whether the blocked CPU path applies: parameters on the CPU, one dtype."""
        return bool(self.params) and all(p.device.type == "cpu" for p in self.params) and \
            len({p.dtype for p in self.params}) == 1

    def blocks(self) -> _Blocks | None:
        """The CPU plan (see :data:`CPU_BLOCK`), made again when a tensor moves; ``None`` where the
        formulas run over the whole tensor lists (another device, or a state that is not flat)."""
        return self._plan(self.running, self.trace)

    def _plan(self, running: list[Tensor], trace: list[Tensor]) -> _Blocks | None:
        key = (self.block, *(t.data_ptr() for t in self.params + running + trace))
        if key not in self._blocks:
            if len(self._blocks) >= 2:  # the state and its spare: any other key is stale
                self._blocks.clear()
            self._blocks[key] = None
            if self.block and self._flat_device():
                flat = [_flat_base(t, self.params) for t in (running, trace)]
                if flat[0] is not None and flat[1] is not None:
                    self._blocks[key] = _Blocks([p.detach() for p in self.params], *flat, self.block)
        return self._blocks[key]

    def __getstate__(self) -> dict:  # views, scratch and spare buffers are made again on use
        return {**self.__dict__, "_blocks": {}, "_spare": None, "_staged": None, "_staged_gradients": None,
                "_next_penalty": None, "_compiled": {}}

    def _penalty_key(self) -> tuple:
        """What the penalty value depends on: the weights' and the state's storage and in-place versions."""
        return tuple((t.data_ptr(), t._version) for t in self.params + self.running + self.trace)

    def _run_compiled(self, formula: Callable, *args: Any) -> Any:
        """``formula(*args)`` through ``torch.compile`` (see ``compile``); None where it does not apply or
        compiling fails (then one warning, and the state becomes flat for the blocked path)."""
        if not self._compiling():
            return None
        try:
            if formula not in self._compiled:
                options = self.compile if isinstance(self.compile, dict) else {}
                self._compiled[formula] = torch.compile(formula, **options)
            return self._compiled[formula](*args)
        except Exception as error:  # compiler or backend failure: eager from now on
            warn_compile_failed("FPTT compile", "FPTT eager", error)
            self.compile, self._compiled, self._spare = False, {}, None
            weights = [p.detach() for p in self.params]
            self.running, self.trace = _flat_views(weights, self.running), _flat_views(weights, self.trace)
            return None

    def penalty(self) -> Tensor:
        """``R(W)`` as a scalar tensor to add to the step loss (differentiable in ``W``)."""
        return _Penalty.apply(self, *self.params)

    def update(self) -> None:
        """Advance ``lam`` and ``W_bar``; call right after ``optimizer.step()``."""
        self.stage()
        self.accept(True)

    def in_place_state(self) -> list[Tensor]:
        """The state tensors :meth:`stage` changes in place (none where it writes the spare buffers):
        what a guard that undoes bad updates must copy."""
        return [] if self._compiling() or self.blocks() is not None else self.running + self.trace

    @torch.no_grad()
    def stage(self) -> Tensor | None:
        """Compute the update; call right after ``optimizer.step()``, then :meth:`accept`.

        On the CPU the new ``lam`` and ``W_bar`` go to the spare buffers (new tensors when compiled), with
        the next penalty value (finite only when the weights and all of the new state are) computed in the
        same pass; that value is returned. Elsewhere the state is updated in place and ``None`` is returned.
        """
        self._staged_gradients = None  # set by the compiled path only
        if self._compiling():
            self._spare = None  # the previous state: freed before the new one is made
            weights = [p.detach() for p in self.params]
            result = self._run_compiled(_staged_update, weights, self.running, self.trace, self.alpha, self.beta,
                                        self.update_alpha)
            if result is not None:
                self._spare, self._staged, self._staged_gradients = result[:2], result[2], result[3]
                return self._staged
        blocks = self.blocks()
        if blocks is None:
            params = [p.detach() for p in self.params]
            torch._foreach_add_(self.trace, torch._foreach_sub(params, self.running), alpha=-self.update_alpha)
            torch._foreach_mul_(self.running, 1.0 - self.beta)
            torch._foreach_add_(self.running, params, alpha=self.beta)
            torch._foreach_add_(self.running, self.trace, alpha=-self.beta / self.update_alpha)
            return None
        spare = self._plan(*self._spare) if self._spare is not None else None
        if spare is None:  # first update, or the weights moved or changed layout since
            weights = [p.detach() for p in self.params]
            self._spare = _flat_views(weights, None), _flat_views(weights, None)
            spare = self._plan(*self._spare)
        if self.native and (value := self._stage_native(blocks, spare)) is not None:
            self._staged = value
            return value
        squares, dots = [], []
        for (w, w_bar, lam, difference), (_, new_bar, new_lam, _, _) in zip(blocks, spare.blocks):
            torch.add(lam, difference, alpha=-self.update_alpha, out=new_lam)
            torch.mul(w_bar, 1.0 - self.beta, out=new_bar)
            new_bar.add_(w, alpha=self.beta)
            new_bar.add_(new_lam, alpha=-self.beta / self.update_alpha)
            squares.append(torch.linalg.vector_norm(torch.sub(w, new_bar, out=difference)))
            dots.append(torch.dot(w, new_lam))
        value = 0.5 * self.alpha * torch.stack(squares).square().sum() - torch.stack(dots).sum()
        self._staged = value
        return value

    def _stage_native(self, blocks: _Blocks, spare: _Blocks) -> Tensor | None:
        """:meth:`stage` from the state's plan into the spare's by the ``fptt_stage`` kernel, which also
        writes the next penalty's gradient (into new tensors, one per weight: autograd may keep them as
        ``.grad``, and below 32 MiB they come from the heap, see :mod:`spikeloc.allocator`); the penalty
        value, or None where the kernel does not apply (not float32, a weight not dense, no kernels)."""
        params = blocks.params
        if params[0].dtype != torch.float32 or not blocks.dense or not kernels.available():
            return None
        grads, value = [torch.empty_like(p) for p in params], torch.empty((), dtype=torch.float64)
        count = len(params)
        weights = (ctypes.c_void_p * count)(*(p.data_ptr() for p in params))
        numels = (ctypes.c_int64 * count)(*(p.numel() for p in params))
        outputs = (ctypes.c_void_p * count)(*(g.data_ptr() for g in grads))
        state = blocks.running, blocks.trace, spare.running, spare.trace
        bar, lam, new_bar, new_lam = (t.data_ptr() for t in state)
        kernels.library().fptt_stage(ctypes.addressof(weights), ctypes.addressof(numels), count, bar, lam, self.alpha,
                                     self.beta, self.update_alpha, new_bar, new_lam, ctypes.addressof(outputs),
                                     value.data_ptr(), torch.get_num_threads())
        self._staged_gradients = grads
        return value.float()

    def accept(self, keep: bool | Tensor) -> None:
        """Make the staged update the state if ``keep`` (a CPU flag is read), else drop it."""
        if self._staged is None:
            return
        value, gradients = self._staged, self._staged_gradients
        self._staged = self._staged_gradients = None
        if bool(keep):
            (self.running, self.trace), self._spare = self._spare, (self.running, self.trace)
            self._next_penalty = value, gradients, self._penalty_key()

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
