"""Layers built around the neurons: the LTC-SN conv cell, the dense LTC-SN layer and a leaky read-out.

Every layer here: ``forward(x_t, state=None) -> (y_t, state)`` for one time step, ``None`` meaning fresh state.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ..kernels import strided_conv
from . import cpu_kernels
from . import functional as F
from .backend import Backend, check, resolve
from .fused import fused_ltc_step
from .modules import LTCNeuron, NeuronKind, _membrane, _step, _zeros, make_neuron
from .surrogate import Surrogate, get_surrogate


class SpikingConv2d(nn.Module):
    """The LTC-SN conv cell: ``i = BN(conv(x))`` then a spiking neuron.

    ``x`` ``[B, C_in, H, W]`` -> spikes ``[B, C_out, H / stride, W / stride]``; the neuron's state. Where an LTC
    neuron's backend resolves to ``cpu_kernels``, BN and the neuron run as one CPU operator
    (:mod:`.cpu_kernels`) and a strided convolution computes its input gradient channels-last
    (:mod:`spikeloc.kernels.strided_conv`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, neuron: NeuronKind = "ltc", **neuron_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.neuron = make_neuron(neuron, out_channels, **neuron_kwargs)
        self.out_channels = out_channels

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        neuron = self.neuron
        if not isinstance(neuron, LTCNeuron) or resolve(neuron.backend, x, neuron.kernels_missing() is None) != \
                "cpu_kernels":
            return neuron(self.bn(self.conv(x)), state)
        current = strided_conv.conv2d(self.conv, x)
        if neuron.twin:
            return neuron(self.bn(current), state)
        spike, u = cpu_kernels.ltc_cell(current, _membrane(state, current, neuron.init_state), self.bn, neuron)
        return spike, {"u": u, "s": spike}


class LTCDense(nn.Module):
    """Dense LTC-SN layer, optionally recurrent and with an adaptive threshold (the paper; README "What is inside").

    ``i = W x (+ W_rec s_prev)``, ``tau = sigmoid(W_tau [i, u])``; adaptive:
    ``rho = sigmoid(W_rho [i, b])``, ``theta = 0.1 + 1.8 b``. ``x`` ``[B, N_in]`` -> ``[B, N]``;
    state ``{"u", "s"}`` (plus ``"b"`` when adaptive), each ``[B, N]``. ``backend``: as :class:`LIFNeuron`'s.
    """

    def __init__(self, in_features: int, out_features: int, recurrent: bool = False, adaptive: bool = False,
                 threshold: float = 1.0, surrogate: str | Surrogate = "multi_gaussian",
                 reset: F.Reset = "hard", backend: Backend = "eager") -> None:
        super().__init__()
        self.input = nn.Linear(in_features, out_features)
        self.recurrent = nn.Linear(out_features, out_features, bias=False) if recurrent else None
        self.tau = nn.Linear(2 * out_features, out_features)
        self.rho = nn.Linear(2 * out_features, out_features) if adaptive else None
        self.threshold, self.surrogate, self.reset = threshold, get_surrogate(surrogate), reset
        self.backend = check(backend, "LTCDense", "the kernels are for LTC conv cells")

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        current = self.input(x)
        u, s = _zeros(state, "u", current), _zeros(state, "s", current)
        if self.recurrent is not None:
            current = current + self.recurrent(s)
        tau = torch.sigmoid(self.tau(torch.cat([current, u], dim=-1)))
        new_state = {}
        threshold = self.threshold
        if self.rho is not None:
            b = _zeros(state, "b", current)
            rho = torch.sigmoid(self.rho(torch.cat([current, b], dim=-1)))
            threshold, new_state["b"] = F.adaptive_threshold(b, s, rho)
        compile = _step(self, current)
        step = F.ltc_step if compile is None else partial(fused_ltc_step, compile=compile)
        spike, u = step(current, u, tau, threshold, self.surrogate, self.reset)
        return spike, {"u": u, "s": spike, **new_state}

    def extra_repr(self) -> str:
        kind = "adaptive" if self.rho is not None else f"threshold={self.threshold}"
        return (f"{kind}, reset={self.reset}, surrogate={self.surrogate}, recurrent={self.recurrent is not None}, "
                f"backend={self.backend}")


class LeakyReadout(nn.Module):
    """Non-spiking read-out ``u' = (1 - tau) u + tau x`` with a learned per-channel ``tau``.

    ``x`` ``[B, C, ...]`` (channels on dim 1) -> ``u`` of the same shape; state ``{"u"}``.
    """

    def __init__(self, channels: int, tau_init: float = 0.5) -> None:
        super().__init__()
        self.tau_logit = nn.Parameter(torch.full((channels,), float(torch.logit(torch.tensor(tau_init)))))

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        tau = torch.sigmoid(self.tau_logit).view(-1, *([1] * (x.dim() - 2)))
        u = F.readout_step(x, _zeros(state, "u", x), tau)
        return u, {"u": u}
