"""The ``torch.ops.spikeloc`` operators: schemas, fake tensors (shapes for ``torch.compile``) and autograd.

Their CPU implementations (``ops.cpp``) are loaded by :func:`spikeloc.kernels.load`.

* ``ltc_cell(cur, u, bn weight/bias, tau_weight, bn' weight/bias, bn means/variances, ...)``: the LTC
  conv cell from its convolution's output ``cur`` ``[B, C, H, W]`` and membrane ``u``; returns
  ``(spike, u_next, mean1, var1, mean2, var2, a, t, rstd1, rstd2)``: the spikes and membrane, both batch
  norms' statistics (the batch's where ``batch_stats``, else the given ones) and what the backward reads.
  Differentiable in the current, the membrane and the five weights.
* ``fptt_stage(weights, bar, lam, new_bar!, new_lam!, alpha, beta, update_alpha)``: FPTT's update of the
  flat state into ``new_bar`` and ``new_lam``; returns the next penalty's flat gradient and its value.
* ``fptt_penalty(weights, bar, lam, alpha)``: the penalty's flat gradient and value of the current state, with
  ``fptt_stage``'s roundings.
* ``nhwc_to_nchw(x)``: a channels-last ``[N, C, H, W]`` tensor as a contiguous one.
"""
from __future__ import annotations

import torch
from torch import Tensor

_LIB = torch.library.Library("spikeloc", "DEF")
_LIB.define("ltc_cell(Tensor cur, Tensor u, Tensor w1, Tensor b1, Tensor tau_weight, Tensor w2, Tensor b2, "
            "Tensor mean1, Tensor var1, Tensor mean2, Tensor var2, bool batch_stats, float eps1, float eps2, "
            "float threshold, bool hard, int padding, float[] surrogate) -> "
            "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_LIB.define("ltc_cell_backward(Tensor? grad_spike, Tensor? grad_next, Tensor cur, Tensor u, Tensor a, Tensor t, "
            "Tensor tau_weight, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor mean1, Tensor rstd1, "
            "Tensor mean2, Tensor rstd2, bool batch_stats, float threshold, bool hard, int padding, bool need_u, "
            "float[] surrogate) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_LIB.define("fptt_stage(Tensor[] weights, Tensor bar, Tensor lam, Tensor(a!) new_bar, Tensor(b!) new_lam, "
            "float alpha, float beta, float update_alpha) -> (Tensor, Tensor)")
_LIB.define("fptt_penalty(Tensor[] weights, Tensor bar, Tensor lam, float alpha) -> (Tensor, Tensor)")
_LIB.define("nhwc_to_nchw(Tensor x) -> Tensor")

_CELL_TENSORS = 11  # the tensor inputs of ltc_cell, cur to var2


@torch.library.register_fake("spikeloc::ltc_cell", lib=_LIB)
def _(cur, u, w1, b1, tau_weight, w2, b2, mean1, var1, mean2, var2, batch_stats, eps1, eps2, threshold, hard,
      padding, surrogate):
    like, stat = (lambda: torch.empty_like(cur)), (lambda: torch.empty_like(mean1))
    return like(), like(), stat(), stat(), stat(), stat(), like(), like(), stat(), stat()


@torch.library.register_fake("spikeloc::ltc_cell_backward", lib=_LIB)
def _(grad_spike, grad_next, cur, u, a, t, tau_weight, w1, b1, w2, b2, mean1, rstd1, mean2, rstd2, batch_stats,
      threshold, hard, padding, need_u, surrogate):
    grad_u = torch.empty_like(cur) if need_u else cur.new_empty(0)
    return (torch.empty_like(cur), grad_u, torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(tau_weight),
            torch.empty_like(w2), torch.empty_like(b2))


@torch.library.register_fake("spikeloc::fptt_stage", lib=_LIB)
def _(weights, bar, lam, new_bar, new_lam, alpha, beta, update_alpha):
    return torch.empty_like(bar), bar.new_empty((), dtype=torch.float64)


@torch.library.register_fake("spikeloc::fptt_penalty", lib=_LIB)
def _(weights, bar, lam, alpha):
    return torch.empty_like(bar), bar.new_empty((), dtype=torch.float64)


@torch.library.register_fake("spikeloc::nhwc_to_nchw", lib=_LIB)
def _(x):
    return x.new_empty(x.shape)


def _cell_setup(ctx, inputs: tuple, output: tuple) -> None:
    cur, u, w1, b1, tau_weight, w2, b2 = inputs[:7]
    batch_stats, _, _, threshold, hard, padding, surrogate = inputs[_CELL_TENSORS:]
    _, _, mean1, _, mean2, _, a, t, rstd1, rstd2 = output
    ctx.save_for_backward(cur, u, a, t, tau_weight, w1, b1, w2, b2, mean1, rstd1, mean2, rstd2)
    ctx.settings = (batch_stats, threshold, hard, padding, surrogate)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the kernels skip it
    ctx.mark_non_differentiable(*output[2:])


def _cell_backward(ctx, grad_spike: Tensor | None, grad_next: Tensor | None, *_: Tensor | None) -> tuple:
    no_grads = (None,) * (len(ctx.needs_input_grad))
    if grad_spike is None and grad_next is None:
        return no_grads
    batch_stats, threshold, hard, padding, surrogate = ctx.settings
    need_u = ctx.needs_input_grad[1]  # not where u was cut from the graph (FPTT between updates)
    grads = torch.ops.spikeloc.ltc_cell_backward(grad_spike, grad_next, *ctx.saved_tensors, batch_stats, threshold,
                                                 hard, padding, need_u, surrogate)
    grad_cur, grad_u, *weights = grads
    return (grad_cur, grad_u if need_u else None, *weights) + no_grads[7:]


torch.library.register_autograd("spikeloc::ltc_cell", _cell_backward, setup_context=_cell_setup, lib=_LIB)
