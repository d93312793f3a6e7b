"""Pure neuron maths: one time step per call, state in and state out.

Shapes are elementwise: ``current``, ``u`` and the returned spikes share one shape,
``[B, C, H, W]`` for convolutional layers or ``[B, N]`` for dense ones.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor

from .surrogate import Surrogate

Reset = Literal["hard", "soft"]


def reset_membrane(u: Tensor, spike: Tensor, threshold: Tensor | float, mode: Reset = "hard") -> Tensor:
    """Hard reset ``(1 - s) * u`` or soft reset ``u - s * theta``."""
    if mode == "hard":
        return (1 - spike) * u
    if mode == "soft":
        return u - spike * threshold
    raise ValueError(f"reset must be 'hard' or 'soft', got {mode!r}")


def ltc_step(
    current: Tensor, u: Tensor, tau: Tensor, threshold: Tensor | float, surrogate: Surrogate, reset: Reset = "hard"
) -> tuple[Tensor, Tensor]:
    """LTC-SN: ``u' = u + tau * (i - u)``, ``s = H(u' - theta)``, then reset. Returns ``(s, u)``."""
    u = u + tau * (current - u)
    spike = surrogate(u - threshold)
    return spike, reset_membrane(u, spike, threshold, reset)


def lif_step(
    current: Tensor, u: Tensor, decay: Tensor | float, threshold: Tensor | float, surrogate: Surrogate,
    reset: Reset = "hard",
) -> tuple[Tensor, Tensor]:
    """LIF with a fixed leak: ``u' = decay * u + i``, ``s = H(u' - theta)``, then reset."""
    u = decay * u + current
    spike = surrogate(u - threshold)
    return spike, reset_membrane(u, spike, threshold, reset)


def adaptive_threshold(
    b: Tensor, spike_prev: Tensor, rho: Tensor | float, base: float = 0.1, scale: float = 1.8
) -> tuple[Tensor, Tensor]:
    """Threshold adaptation ``b' = rho * b + (1 - rho) * s_prev``, ``theta = base + scale * b'``.

    Returns ``(theta, b')``.
    """
    b = rho * b + (1 - rho) * spike_prev
    return base + scale * b, b


def readout_step(x: Tensor, u: Tensor, tau: Tensor | float) -> Tensor:
    """Leaky, non-spiking read-out: ``u' = (1 - tau) * u + tau * x``."""
    return (1 - tau) * u + tau * x
