"""The ``torch.ops.spikeloc`` operators: schemas and fake tensors (shapes for ``torch.compile``).

Their CPU implementations (``ops.cpp``) are loaded by :func:`spikeloc.kernels.load`. The operators are
primitives without autograd of their own: the LTC cell's is :func:`spikeloc.neurons.cpu_kernels.ltc_cell`'s
``autograd.Function`` around ``ltc_cell`` and ``ltc_cell_backward`` (``torch.library.register_autograd``'s
wrapper refills the schema's defaults in Python at every call, which cost as much as a small layer's
kernels: benchmarks/RESULTS.md).

* ``ltc_cell(cur, u, bn weight/bias, tau_weight, bn' weight/bias, bn means/variances, ...)``: the LTC
  conv cell from its convolution's output ``cur`` ``[B, C, H, W]`` and membrane ``u``; returns
  ``(spike, u_next, mean1, var1, mean2, var2, a, t, rstd1, rstd2)``: the spikes and membrane, both batch
  norms' statistics (the batch's where ``batch_stats``, else the given ones) and what the backward reads.
* ``ltc_cell_backward(grad_spike?, grad_next?, ...)``: the gradients of the current, the membrane (empty
  unless ``need_u``) and the five weights.
* ``fptt_stage(weights, bar, lam, new_bar!, new_lam!, alpha, beta, update_alpha)``: FPTT's update of the
  flat state into ``new_bar`` and ``new_lam``; returns the next penalty's gradient (one tensor per weight) and
  its value.
* ``fptt_penalty(weights, bar, lam, alpha)``: the penalty's gradients and value of the current state, with
  ``fptt_stage``'s roundings.
* ``nhwc_to_nchw(x)``: a channels-last ``[N, C, H, W]`` tensor as a contiguous one.
"""
from __future__ import annotations

import torch

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
            "float alpha, float beta, float update_alpha) -> (Tensor[], Tensor)")
_LIB.define("fptt_penalty(Tensor[] weights, Tensor bar, Tensor lam, float alpha) -> (Tensor[], Tensor)")
_LIB.define("nhwc_to_nchw(Tensor x) -> Tensor")

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
    return [torch.empty_like(w) for w in weights], bar.new_empty((), dtype=torch.float64)


@torch.library.register_fake("spikeloc::fptt_penalty", lib=_LIB)
def _(weights, bar, lam, alpha):
    return [torch.empty_like(w) for w in weights], bar.new_empty((), dtype=torch.float64)


@torch.library.register_fake("spikeloc::nhwc_to_nchw", lib=_LIB)
def _(x):
    return x.new_empty(x.shape)


