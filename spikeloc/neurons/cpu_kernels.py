"""The LTC-SN conv cell as hand-written CPU kernels (``spikeloc/kernels/ltc_cell.c``; README "Speed and many GPUs").

:func:`ltc_cell` computes what ``neuron(bn(current))`` of an LTC :class:`~spikeloc.neurons.modules.SpikingConv2d`
computes from its convolution's output ``current`` (BN, ``tau = sigmoid(BN'(tau_conv(i + u)))``, the
LTC update, spike and reset) as one autograd node: four C kernels around ``tau_conv`` that each walk
the tensors one channel at a time, so BN's statistics and the pass that uses them share the cache,
and the surrogate's exponentials run vectorised. Values equal the composed modules' up to float
rounding (a spike may flip where the membrane is within rounding of the threshold).

The kernels are built on first use (:mod:`spikeloc.kernels`); without a C compiler one warning names
the error and the cells run the usual modules. Float32 on CPU, batch-first contiguous NCHW; anything
else runs the usual modules.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import Surrogate, available, library, scope
from .surrogate import MultiGaussian


def _ptr(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _dims(tensor: Tensor) -> tuple[int, int, int]:
    n, c = tensor.shape[:2]
    return n, c, tensor.numel() // max(n * c, 1)


# ---- the kernels: plain functions in eager mode, custom operators under torch.compile ---------------
_OPERATORS: dict = {}


def _operator(fn):
    """``fn`` as the custom operator ``spikeloc::ltc_<name>`` (opaque to torch.compile, which calls it)."""
    _OPERATORS[fn] = torch.library.custom_op(f"spikeloc::ltc{fn.__name__}", fn, mutates_args=())
    return _OPERATORS[fn]


def _call(fn, *args):
    """``fn(*args)``: through its custom operator while torch.compile traces; eager, without the
    dispatcher's cost, in a profiler range of the operator's name while a profiler runs."""
    if torch.compiler.is_compiling():
        return _OPERATORS[fn](*args)
    with scope(f"spikeloc::ltc{fn.__name__}"):
        return fn(*args)


def _input_forward(cur: Tensor, u: Tensor, w1: Tensor, b1: Tensor, mean: Tensor, var: Tensor,
                   batch_stats: bool, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``a = BN(cur) + u`` and BN's ``(mean, var, rstd)``: the batch's, or the given running ones."""
    cur, u = cur.contiguous(), u.contiguous()
    a, mean, var, rstd = torch.empty_like(cur), mean.clone(), var.clone(), torch.empty_like(mean)
    library().ltc_input_forward(_ptr(cur), _ptr(u), _ptr(w1), _ptr(b1), *_dims(cur), batch_stats, eps,
                                _ptr(mean), _ptr(var), _ptr(rstd), _ptr(a), torch.get_num_threads())
    return a, mean, var, rstd


@_operator(_input_forward).register_fake
def _(cur, u, w1, b1, mean, var, batch_stats, eps):
    return torch.empty_like(cur), torch.empty_like(mean), torch.empty_like(var), torch.empty_like(mean)


def _tau_forward(cur: Tensor, u: Tensor, t: Tensor, w1: Tensor, b1: Tensor, mean1: Tensor, rstd1: Tensor,
                 w2: Tensor, b2: Tensor, mean: Tensor, var: Tensor, batch_stats: bool, eps: float, threshold: float,
                 hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(spike, u_next)`` and BN''s ``(mean, var, rstd)`` from the tau convolution's output ``t``."""
    cur, u, t = cur.contiguous(), u.contiguous(), t.contiguous()
    spike, u_next, mean, var, rstd = (torch.empty_like(cur), torch.empty_like(cur), mean.clone(), var.clone(),
                                      torch.empty_like(mean))
    library().ltc_tau_forward(*map(_ptr, (cur, u, t, w1, b1, mean1, rstd1, w2, b2)), *_dims(cur), batch_stats, eps,
                              threshold, hard, _ptr(mean), _ptr(var), _ptr(rstd), _ptr(spike), _ptr(u_next),
                              torch.get_num_threads())
    return spike, u_next, mean, var, rstd


@_operator(_tau_forward).register_fake
def _(cur, u, t, w1, b1, mean1, rstd1, w2, b2, mean, var, batch_stats, eps, threshold, hard):
    return (torch.empty_like(cur), torch.empty_like(cur), torch.empty_like(mean), torch.empty_like(var),
            torch.empty_like(mean))


def _tau_backward(cur: Tensor, u: Tensor, t: Tensor, grad_spike: Tensor | None, grad_next: Tensor | None,
                  w1: Tensor, b1: Tensor, mean1: Tensor, rstd1: Tensor, w2: Tensor, b2: Tensor, mean2: Tensor,
                  rstd2: Tensor, batch_stats: bool, threshold: float, hard: bool, scaled: bool,
                  surrogate: list[float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_u1, grad_t, grad_w2, grad_b2)``, ``grad_u1`` times ``tau`` where ``scaled`` (what
    :func:`_input_backward` takes where ``u`` needs no gradient); a missing incoming gradient counts as zero."""
    grads = [None if g is None else g.contiguous() for g in (grad_spike, grad_next)]
    grad_u1, grad_t, grad_w2, grad_b2 = (torch.empty_like(cur), torch.empty_like(cur), torch.empty_like(w2),
                                         torch.empty_like(b2))
    library().ltc_tau_backward(*map(_ptr, (cur, u, t, *grads, w1, b1, mean1, rstd1, w2, b2, mean2, rstd2)),
                               *_dims(cur), batch_stats, threshold, hard, scaled, Surrogate(*surrogate),
                               _ptr(grad_u1), _ptr(grad_t), _ptr(grad_w2), _ptr(grad_b2), torch.get_num_threads())
    return grad_u1, grad_t, grad_w2, grad_b2


@_operator(_tau_backward).register_fake
def _(cur, u, t, grad_spike, grad_next, w1, b1, mean1, rstd1, w2, b2, mean2, rstd2, batch_stats, threshold, hard,
      scaled, surrogate):
    return torch.empty_like(cur), torch.empty_like(cur), torch.empty_like(w2), torch.empty_like(b2)


def _input_backward(cur: Tensor, t: Tensor, grad_u1: Tensor, grad_a: Tensor, w1: Tensor, mean1: Tensor,
                    rstd1: Tensor, w2: Tensor, b2: Tensor, mean2: Tensor, rstd2: Tensor, batch_stats: bool,
                    need_u: bool, reuse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_cur, grad_u, grad_w1, grad_b1)`` given ``grad_a`` from the tau convolution's backward; ``grad_u``
    is empty unless ``need_u``, and without it ``grad_u1`` comes scaled by ``tau`` (``t`` is not read).
    ``reuse``: ``grad_cur`` overwrites ``grad_u1`` and ``grad_u`` ``grad_a`` (the backward's own temporaries,
    read where they are written: no stream of fresh memory); not for the custom operator, whose outputs
    may not alias its inputs."""
    grad_a = grad_a.contiguous()
    grad_cur = grad_u1 if reuse else torch.empty_like(cur)
    grad_u = (grad_a if reuse else torch.empty_like(cur)) if need_u else cur.new_empty(0)
    grad_w1, grad_b1 = torch.empty_like(w1), torch.empty_like(w1)
    library().ltc_input_backward(*map(_ptr, (cur, t, grad_u1, grad_a, w1, mean1, rstd1, w2, b2, mean2, rstd2)),
                                 *_dims(cur), batch_stats, _ptr(grad_u) if need_u else None, _ptr(grad_cur),
                                 _ptr(grad_w1), _ptr(grad_b1), torch.get_num_threads())
    return grad_cur, grad_u, grad_w1, grad_b1


@_operator(_input_backward).register_fake
def _(cur, t, grad_u1, grad_a, w1, mean1, rstd1, w2, b2, mean2, rstd2, batch_stats, need_u, reuse):
    return torch.empty_like(cur), torch.empty_like(cur) if need_u else cur.new_empty(0), torch.empty_like(w1), \
        torch.empty_like(w1)


class _Cell(torch.autograd.Function):
    """One node: BN, the tau convolution, BN', sigmoid, the LTC update, spike and reset."""

    @staticmethod
    def forward(ctx, cur: Tensor, u: Tensor, w1: Tensor, b1: Tensor, tau_weight: Tensor, w2: Tensor, b2: Tensor,
                mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor, settings: dict) -> tuple:
        batch_stats, eps1, eps2 = settings["batch_stats"], settings["eps1"], settings["eps2"]
        a, mean1, var1, rstd1 = _call(_input_forward, cur, u, w1, b1, mean1, var1, batch_stats, eps1)
        t = torch.nn.functional.conv2d(a, tau_weight, None, 1, settings["padding"])
        spike, u_next, mean2, var2, rstd2 = _call(_tau_forward, cur, u, t, w1, b1, mean1, rstd1, w2, b2, mean2,
                                                  var2, batch_stats, eps2, settings["threshold"], settings["hard"])
        ctx.settings = settings
        ctx.save_for_backward(cur, u, t, a, tau_weight, w1, b1, w2, b2, mean1, rstd1, mean2, rstd2)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(mean1, var1, mean2, var2)
        return spike, u_next, mean1, var1, mean2, var2

    @staticmethod
    def backward(ctx, grad_spike: Tensor | None, grad_next: Tensor | None, *_stats: Tensor | None) -> tuple:
        cur, u, t, a, tau_weight, w1, b1, w2, b2, mean1, rstd1, mean2, rstd2 = ctx.saved_tensors
        settings = ctx.settings
        if grad_spike is None and grad_next is None:
            return (None,) * 12
        batch_stats = settings["batch_stats"]
        need_u = ctx.needs_input_grad[1]  # not where u was cut from the graph (FPTT between updates)
        grad_u1, grad_t, grad_w2, grad_b2 = _call(
            _tau_backward, cur, u, t, grad_spike, grad_next, w1, b1, mean1, rstd1, w2, b2, mean2, rstd2, batch_stats,
            settings["threshold"], settings["hard"], not need_u, settings["surrogate"])
        padding = settings["padding"]
        grad_a, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_t, a, tau_weight, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], 1, [True, True, False])
        grad_cur, grad_u, grad_w1, grad_b1 = _call(_input_backward, cur, t, grad_u1, grad_a, w1, mean1, rstd1, w2,
                                                   b2, mean2, rstd2, batch_stats, need_u,
                                                   not torch.compiler.is_compiling())
        return (grad_cur, grad_u if need_u else None, grad_w1, grad_b1, grad_weight, grad_w2, grad_b2, None, None,
                None, None, None)


def _stats(bn: nn.BatchNorm2d, like: Tensor) -> tuple[Tensor, Tensor]:
    """BN's running ``(mean, var)``, or placeholders where it has none (the batch's are used)."""
    if bn.running_mean is None:
        return like.new_zeros(like.shape[1]), like.new_ones(like.shape[1])
    return bn.running_mean, bn.running_var


def _update_running(bns: tuple[nn.BatchNorm2d, ...], means: list[Tensor], variances: list[Tensor], count: int) -> None:
    """``nn.BatchNorm2d``'s running-statistics update of each of ``bns`` from the batch's mean and biased
    variance (``_foreach`` kernels: a cell's small tensors cost their calls more than their maths)."""
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    for bn, mean, var in zip(bns, means, torch._foreach_mul(variances, count / max(count - 1, 1))):
        if bn.momentum is None:  # a cumulative average
            bn.running_mean.lerp_(mean, 1.0 / bn.num_batches_tracked)
            bn.running_var.lerp_(var, 1.0 / bn.num_batches_tracked)
        else:
            torch._foreach_lerp_([bn.running_mean, bn.running_var], [mean, var], bn.momentum)


def _hooked(*modules: nn.Module) -> bool:
    """Whether any module has forward hooks (firing statistics count through them: run the modules)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _same_mode(bn: nn.BatchNorm2d, tau_bn: nn.BatchNorm2d) -> bool:
    """Both batch norms in training or both in eval, both with running statistics or neither."""
    return bn.training == tau_bn.training and (bn.running_mean is None) == (tau_bn.running_mean is None)


def applies(cell: nn.Module, current: Tensor) -> bool:
    """Whether :func:`ltc_cell` can run this cell on ``current`` (else: the usual modules)."""
    neuron = cell.neuron
    if not getattr(neuron, "native", False) or neuron.twin or current.dtype != torch.float32 or \
            current.device.type != "cpu" or current.dim() != 4 or not current.is_contiguous() or \
            torch.is_autocast_enabled("cpu"):
        return False
    bn, tau_conv, tau_bn = cell.bn, neuron.tau_conv, neuron.tau_bn
    return (type(neuron.surrogate) is MultiGaussian and not isinstance(neuron.threshold, Tensor)
            and tau_conv.stride == (1, 1) and tau_conv.dilation == (1, 1) and tau_conv.groups == 1 and bn.affine
            and tau_bn.affine and _same_mode(bn, tau_bn) and not _hooked(bn, neuron, tau_conv, tau_bn)
            and available())


def ltc_cell(current: Tensor, u: Tensor, bn: nn.BatchNorm2d, neuron: nn.Module) -> tuple[Tensor, Tensor]:
    """``neuron(bn(current), {"u": u})``'s ``(spike, u_next)`` through the kernels; updates both BNs' running
    statistics in training as they would. ``current``, ``u``: ``[B, C, H, W]`` float32 on CPU."""
    tau_bn = neuron.tau_bn
    settings = {"batch_stats": bn.training or bn.running_mean is None, "eps1": bn.eps, "eps2": tau_bn.eps,
                "threshold": float(neuron.threshold), "hard": neuron.reset == "hard",
                "padding": neuron.tau_conv.padding[0], "surrogate": [*neuron.surrogate.constants(), neuron.surrogate.sigma]}
    spike, u_next, mean1, var1, mean2, var2 = _Cell.apply(  # u contiguous once: the kernels and backward read it
        current, u.contiguous(), bn.weight, bn.bias, neuron.tau_conv.weight, tau_bn.weight, tau_bn.bias,
        *_stats(bn, current), *_stats(tau_bn, current), settings)
    if bn.training and bn.track_running_stats:
        _update_running((bn, tau_bn), [mean1, mean2], [var1, var2], current.numel() // current.shape[1])
    return spike, u_next
