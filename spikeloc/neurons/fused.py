"""Fused LTC-SN and LIF steps: the element-wise update, spike, surrogate and reset as one autograd node.

:func:`fused_ltc_step` returns exactly what :func:`~spikeloc.neurons.functional.ltc_step` returns
(same forward ops in the same order, so the same values bit for bit) and the same gradients with
respect to ``current``, ``u``, ``tau`` and a tensor ``threshold`` up to float rounding (fused
multiply-adds, a cheaper form of the multi-Gaussian). Instead of the ~8 autograd nodes of the
composition (each saving its own operands) it is one node that saves only its inputs and
recomputes the membrane and the surrogate derivative in backward (README "Speed and many GPUs").

With ``compile=True`` (the ``compiled`` backend) the forward and the backward maths are each compiled by
``torch.compile`` into one kernel; a compiler failure raises :class:`~.backend.BackendError`.

Shapes are element-wise: ``current``, ``u``, ``tau`` ``[B, C, H, W]`` (or ``[B, N]``);
``threshold`` and ``decay`` a float or a tensor that broadcasts to them.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .backend import BackendError
from .functional import Reset
from .surrogate import MultiGaussian, Surrogate, get_surrogate

Threshold = Tensor | float


@functools.lru_cache(maxsize=None)
def _named(name: str) -> Surrogate:
    """One shared instance per surrogate name (kernels are cached per surrogate object)."""
    return get_surrogate(name)


def _check_reset(reset: str) -> None:
    if reset not in ("hard", "soft"):
        raise ValueError(f"reset must be 'hard' or 'soft', got {reset!r}")


def _spike_reset(u1: Tensor, threshold: Threshold, reset: str) -> tuple[Tensor, Tensor]:
    """``s = H(u1 - theta)`` and the reset membrane, with the reference's ops in its order."""
    v = u1 - threshold
    spike = (v > 0).to(v.dtype)
    return spike, ((1 - spike) * u1 if reset == "hard" else u1 - spike * threshold)


def _spike_reset_grad(u1: Tensor, threshold: Threshold, grad_spike: Tensor, grad_u: Tensor,
                      derivative: Callable[[Tensor], Tensor], reset: str) -> tuple[Tensor, Tensor | None]:
    """Gradients ``(dL/du1, dL/dtheta)`` of :func:`_spike_reset`, the spike's through ``derivative``.

    Written with fused and in-place kernels on fresh tensors only (never on the incoming grads);
    ``torch.where`` rather than ``masked_fill``, which returns a contiguous tensor and so would turn a
    channels-last gradient, and every convolution's gradient after it, into NCHW.
    """
    v = u1 - threshold
    fired = v > 0
    if reset == "hard":  # u = (1 - s) * u1: d/du1 = (1 - s) - u1 * s', d/ds = -u1
        grad_v = torch.addcmul(grad_spike, grad_u, u1, value=-1).mul_(derivative(v))
        grad_theta = -grad_v if isinstance(threshold, Tensor) else None
        return torch.where(fired, 0, grad_u).add_(grad_v), grad_theta
    # soft: u = u1 - s * theta: d/du1 = 1, d/ds = -theta, d/dtheta = -s
    grad_v = (grad_spike - grad_u * threshold).mul_(derivative(v))
    grad_theta = torch.where(fired, grad_u, 0).add_(grad_v).neg_() if isinstance(threshold, Tensor) else None
    return grad_u + grad_v, grad_theta


def _ltc_forward(current: Tensor, u: Tensor, tau: Tensor, threshold: Threshold,
                 reset: str) -> tuple[Tensor, Tensor]:
    return _spike_reset(u + tau * (current - u), threshold, reset)


def _ltc_backward(current: Tensor, u: Tensor, tau: Tensor, threshold: Threshold, grad_spike: Tensor,
                  grad_u: Tensor, derivative: Callable[[Tensor], Tensor], reset: str) -> tuple:
    """``(d current, d u, d tau, d theta)`` of ``u1 = u + tau * (current - u)`` then spike and reset."""
    diff = current - u
    u1 = torch.mul(tau, diff).add_(u)  # the forward's u + tau * diff, bit for bit
    grad_u1, grad_theta = _spike_reset_grad(u1, threshold, grad_spike, grad_u, derivative, reset)
    grad_current = grad_u1 * tau
    return grad_current, grad_u1 - grad_current, grad_u1.mul_(diff), grad_theta


def _lif_forward(current: Tensor, u: Tensor, decay: Threshold, threshold: Threshold,
                 reset: str) -> tuple[Tensor, Tensor]:
    return _spike_reset(decay * u + current, threshold, reset)


def _lif_backward(current: Tensor, u: Tensor, decay: Threshold, threshold: Threshold, grad_spike: Tensor,
                  grad_u: Tensor, derivative: Callable[[Tensor], Tensor], reset: str) -> tuple:
    """``(d current, d u, d decay, d theta)`` of ``u1 = decay * u + current`` then spike and reset."""
    grad_u1, grad_theta = _spike_reset_grad(decay * u + current, threshold, grad_spike, grad_u, derivative, reset)
    grad_decay = grad_u1 * u if isinstance(decay, Tensor) else None
    return grad_u1, grad_u1 * decay, grad_decay, grad_theta


def _multi_gaussian(surrogate: MultiGaussian) -> Callable[[Tensor], Tensor]:
    """``surrogate.derivative`` in place on fresh tensors: 14 element-wise passes instead of ~20 eager
    (same function; float rounding differs by an ulp or so)."""
    c0, c1, k0, k1 = surrogate.constants()
    sigma = surrogate.sigma

    def derivative(v: Tensor) -> Tensor:
        side = (v - sigma).square_().mul_(c1).exp_()
        side.add_((v + sigma).square_().mul_(c1).exp_())
        return v.square().mul_(c0).exp_().mul_(k0).sub_(side, alpha=k1)

    return derivative


def _derivative(surrogate: Surrogate) -> Callable[[Tensor], Tensor]:
    return _multi_gaussian(surrogate) if type(surrogate) is MultiGaussian else surrogate.derivative


# ---- eager or compiled kernels -------------------------------------------------------------------
_MATHS = {"ltc": (_ltc_forward, _ltc_backward), "lif": (_lif_forward, _lif_backward)}
_COMPILED: dict[tuple, tuple[Callable, Callable]] = {}


def _kernels(kind: str, surrogate: Surrogate, reset: str, compile: bool) -> tuple[Callable, Callable]:
    """``(forward, backward)`` with the reset mode and surrogate bound. Compiled kernels are shared per kind,
    reset and surrogate type and parameters, so every layer with the same settings uses one compiled function
    (and its dynamic-shape kernels)."""
    forward, backward = _MATHS[kind]
    kernels = (functools.partial(forward, reset=reset),
               functools.partial(backward, derivative=_derivative(surrogate), reset=reset))
    if not compile:
        return kernels
    key = (kind, reset, type(surrogate), tuple(sorted(vars(surrogate).items())))
    if key not in _COMPILED:
        _COMPILED[key] = tuple(torch.compile(fn, dynamic=True) for fn in kernels)
    return _COMPILED[key]


def _call(settings: tuple, which: int, *tensors) -> tuple:
    """Run the forward (0) or backward (1) maths; a failing compilation raises :class:`BackendError`."""
    kind, surrogate, reset, compile = settings
    try:
        return _kernels(kind, surrogate, reset, compile)[which](*tensors)
    except Exception as error:  # noqa: BLE001 - any compiler failure: name it
        if not compile:
            raise
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise BackendError(f"backend 'compiled': torch.compile of the neuron step failed ({type(error).__name__}: "
                           f"{first}); use fused, which runs the same maths uncompiled") from error


def _reduce(grad: Tensor | None, like: Threshold) -> Tensor | None:
    """Sum a broadcast gradient back to the shape (and dtype) of ``like``; None for floats."""
    if grad is None or not isinstance(like, Tensor):
        return None
    return grad.sum_to_size(like.shape).to(like.dtype) if grad.shape != like.shape else grad.to(like.dtype)


class _FusedStep(torch.autograd.Function):
    """One node: ``(spike, u)`` of an LTC or LIF step; saves the inputs, recomputes in backward."""

    @staticmethod
    def forward(ctx, kind: str, current: Tensor, u: Tensor, rate: Threshold, threshold: Threshold,
                surrogate: Surrogate, reset: str, compile: bool) -> tuple[Tensor, Tensor]:
        ctx.settings = (kind, surrogate, reset, compile)
        ctx.scalars = {name: value for name, value in (("rate", rate), ("threshold", threshold))
                       if not isinstance(value, Tensor)}
        ctx.save_for_backward(current, u, *(t for t in (rate, threshold) if isinstance(t, Tensor)))
        spike, u_out = _call(ctx.settings, 0, current, u, rate, threshold)
        return spike, u_out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_spike: Tensor, grad_u: Tensor) -> tuple:
        current, u, *tensors = ctx.saved_tensors
        rate = ctx.scalars["rate"] if "rate" in ctx.scalars else tensors.pop(0)
        threshold = ctx.scalars["threshold"] if "threshold" in ctx.scalars else tensors.pop(0)
        g_current, g_u, g_rate, g_theta = _call(ctx.settings, 1, current, u, rate, threshold, grad_spike, grad_u)
        return (None, _reduce(g_current, current), _reduce(g_u, u), _reduce(g_rate, rate),
                _reduce(g_theta, threshold), None, None, None)


def fused_ltc_step(current: Tensor, u: Tensor, tau: Tensor, threshold: Threshold,
                   surrogate: Surrogate | str, reset: Reset = "hard",
                   compile: bool = False) -> tuple[Tensor, Tensor]:
    """LTC-SN step as one autograd node; same signature, values and gradients as ``ltc_step``.

    ``u' = u + tau * (i - u)``, ``s = H(u' - theta)``, hard (``(1 - s) u'``) or soft
    (``u' - s theta``) reset. Returns ``(s, u)``, each shaped like ``current``.
    """
    _check_reset(reset)
    surrogate = _named(surrogate) if isinstance(surrogate, str) else surrogate
    return _FusedStep.apply("ltc", current, u, tau, threshold, surrogate, reset, compile)


def fused_lif_step(current: Tensor, u: Tensor, decay: Threshold, threshold: Threshold,
                   surrogate: Surrogate | str, reset: Reset = "hard",
                   compile: bool = False) -> tuple[Tensor, Tensor]:
    """LIF step ``u' = decay u + i`` as one autograd node; same values and gradients as ``lif_step``."""
    _check_reset(reset)
    surrogate = _named(surrogate) if isinstance(surrogate, str) else surrogate
    return _FusedStep.apply("lif", current, u, decay, threshold, surrogate, reset, compile)
