"""The LTC-SN conv cell as one CPU operator (``torch.ops.spikeloc.ltc_cell``; README "Speed and many GPUs").

:func:`ltc_cell` computes what ``neuron(bn(current))`` of an LTC :class:`~spikeloc.neurons.layers.SpikingConv2d`
computes from its convolution's output ``current`` (BN, ``tau = sigmoid(BN'(tau_conv(i + u)))``, the LTC
update, spike and reset) as one autograd node over two operators (forward, backward): hand-written kernels (``spikeloc/kernels/ltc_cell.cpp``) around the tau convolution
that each walk the tensors one channel at a time, so BN's statistics and the pass that uses them share the
cache, and the surrogate's exponentials run vectorised. Values equal the eager modules' up to float rounding
(a spike may flip where the membrane is within rounding of the threshold). This is the ``cpu_kernels``
backend (:mod:`.backend`): float32 NCHW tensors on the CPU.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import BackendError


def _stats(bn: nn.BatchNorm2d, like: Tensor) -> tuple[Tensor, Tensor]:
    """BN's running ``(mean, var)``, or placeholders where it has none (the batch's are used)."""
    if bn.running_mean is None:
        return like.new_zeros(like.shape[1]), like.new_ones(like.shape[1])
    return bn.running_mean, bn.running_var


def _update_running(bns: tuple[nn.BatchNorm2d, ...], means: list[Tensor], variances: list[Tensor], count: int) -> None:
    """``nn.BatchNorm2d``'s running-statistics update of each of ``bns`` from the batch's mean and biased
    variance, which the operator computed (torch's own update would read the input again and round its
    statistics differently from those the cell normalised with)."""
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    for bn, mean, var in zip(bns, means, torch._foreach_mul(variances, count / max(count - 1, 1))):
        if bn.momentum is None:  # a cumulative average
            bn.running_mean.lerp_(mean, 1.0 / bn.num_batches_tracked)
            bn.running_var.lerp_(var, 1.0 / bn.num_batches_tracked)
        else:
            torch._foreach_lerp_([bn.running_mean, bn.running_var], [mean, var], bn.momentum)


class _Cell(torch.autograd.Function):
    """One node: the operator ``ltc_cell`` forward, ``ltc_cell_backward`` backward. Inputs: the current, the
    membrane, BN's weight and bias, the tau convolution's weight, BN''s weight and bias (differentiable), both
    BNs' running statistics and the settings; outputs ``(spike, u_next, mean1, var1, mean2, var2)``."""

    @staticmethod
    def forward(ctx, cur: Tensor, u: Tensor, w1: Tensor, b1: Tensor, tau_weight: Tensor, w2: Tensor, b2: Tensor,
                mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor, settings: tuple) -> tuple:
        batch_stats, eps1, eps2, threshold, hard, padding, surrogate = settings
        spike, u_next, mean1, var1, mean2, var2, a, t, rstd1, rstd2 = torch.ops.spikeloc.ltc_cell(
            cur, u, w1, b1, tau_weight, w2, b2, mean1, var1, mean2, var2, batch_stats, eps1, eps2, threshold, hard,
            padding, surrogate)
        ctx.settings = (batch_stats, threshold, hard, padding, surrogate)
        ctx.save_for_backward(cur, u, a, t, tau_weight, w1, b1, w2, b2, mean1, rstd1, mean2, rstd2)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: the kernels skip it
        ctx.mark_non_differentiable(mean1, var1, mean2, var2)
        return spike, u_next, mean1, var1, mean2, var2

    @staticmethod
    def backward(ctx, grad_spike: Tensor | None, grad_next: Tensor | None, *_stats: Tensor | None) -> tuple:
        if grad_spike is None and grad_next is None:
            return (None,) * 12
        batch_stats, threshold, hard, padding, surrogate = ctx.settings
        need_u = ctx.needs_input_grad[1]  # not where u was cut from the graph (FPTT between updates)
        grad_cur, grad_u, *weights = torch.ops.spikeloc.ltc_cell_backward(
            grad_spike, grad_next, *ctx.saved_tensors, batch_stats, threshold, hard, padding, need_u, surrogate)
        return (grad_cur, grad_u if need_u else None, *weights, None, None, None, None, None)


def _check(current: Tensor, bn: nn.BatchNorm2d, tau_bn: nn.BatchNorm2d) -> None:
    """What the operator needs beyond what the backend's resolution checked."""
    if not current.is_contiguous():
        raise BackendError("backend 'cpu_kernels' needs NCHW-contiguous tensors (channels_last: false)")
    if bn.training != tau_bn.training or (bn.running_mean is None) != (tau_bn.running_mean is None) or \
            not (bn.affine and tau_bn.affine):
        raise BackendError("backend 'cpu_kernels' needs both batch norms of a cell affine, in the same mode and "
                           "both with running statistics or neither")


def ltc_cell(current: Tensor, u: Tensor, bn: nn.BatchNorm2d, neuron: nn.Module) -> tuple[Tensor, Tensor]:
    """``neuron(bn(current), {"u": u})``'s ``(spike, u_next)`` through the operator; updates both BNs' running
    statistics in training as they would. ``current``, ``u``: ``[B, C, H, W]`` float32 on the CPU."""
    tau_bn, tau_conv, surrogate = neuron.tau_bn, neuron.tau_conv, neuron.surrogate
    _check(current, bn, tau_bn)
    settings = (bn.training or bn.running_mean is None, bn.eps, tau_bn.eps, float(neuron.threshold),
                neuron.reset == "hard", tau_conv.padding[0], [*surrogate.constants(), surrogate.sigma])
    spike, u_next, mean1, var1, mean2, var2 = _Cell.apply(
        current, u.contiguous(), bn.weight, bn.bias, tau_conv.weight, tau_bn.weight, tau_bn.bias,
        *_stats(bn, current), *_stats(tau_bn, current), settings)
    if bn.training and bn.track_running_stats:
        _update_running((bn, tau_bn), [mean1, mean2], [var1, var2], current.numel() // current.shape[1])
    return spike, u_next
