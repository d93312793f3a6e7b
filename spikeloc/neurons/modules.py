"""Neuron modules: own the parameters, call the pure step functions, keep state explicit.

Every module here: ``forward(x_t, state=None) -> (y_t, state)`` for one time step, where
``state`` is a dict of batch-first tensors and ``None`` means fresh: all zeros, except the
membrane ``u`` of the LTC, LIF and ALIF neurons and the LTC read-out when ``init_state="uniform"``
(drawn from U[0, 1) with the global torch RNG, as the paper's code does; seed it for reproducible runs).
"""
from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from . import functional as F
from .backend import Backend, check, resolve
from .fused import fused_lif_step, fused_ltc_step
from .surrogate import MultiGaussian, Surrogate, get_surrogate

NeuronKind = Literal["ltc", "lif", "alif", "ltc_readout", "ann"]
InitState = Literal["zeros", "uniform"]


def _zeros(state: dict | None, key: str, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if state is None else state[key]


def _membrane(state: dict | None, like: Tensor, init_state: InitState) -> Tensor:
    """``state["u"]``, or a fresh membrane: zeros, or U[0, 1) for ``init_state="uniform"``."""
    if state is not None:
        return state["u"]
    if init_state == "uniform":
        return torch.rand_like(like)
    if init_state != "zeros":
        raise ValueError(f"init_state must be 'zeros' or 'uniform', got {init_state!r}")
    return torch.zeros_like(like)


def twin_output(current: Tensor) -> tuple[Tensor, dict]:
    """A spiking neuron run as its ANN twin (``twin = True``): ``leaky_relu(i, 0.1)``, stateless, the same
    maths as :class:`ANNNeuron` (README, "Learning: SNN vs ANN twin")."""
    return ANNNeuron.ACTIVATIONS["leaky_relu"](current), {}


def set_twin(module: nn.Module, on: bool) -> int:
    """Run every spiking neuron of ``module`` as its ANN twin (``on``) or spiking again (``not on``):
    one network trains first as the twin, then as the SNN from the twin's weights (the tau-convs,
    unused by the twin, stay fresh). Returns how many neurons were switched."""
    neurons = [m for m in module.modules() if isinstance(m, TWIN_SWITCHABLE)]
    for neuron in neurons:
        neuron.twin = on
    return len(neurons)


def _spiking_repr(module: nn.Module) -> str:
    return f"threshold={module.threshold}, reset={module.reset}, surrogate={module.surrogate}, backend={module.backend}"


def _step(neuron: nn.Module, current: Tensor, kernels: bool = False) -> bool | None:
    """The fused step's ``compile`` flag for ``neuron``'s backend on ``current`` (``cpu_kernels``: a neuron on its
    own runs the fused step), or None for the eager reference."""
    backend = resolve(neuron.backend, current, kernels)
    return None if backend == "eager" else backend == "compiled"


def _lif_update(neuron: nn.Module, current: Tensor, u: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """:func:`~spikeloc.neurons.functional.lif_step` with ``neuron``'s settings, run by its backend."""
    compile = _step(neuron, current)
    if compile is None:
        return F.lif_step(current, u, neuron.decay, threshold, neuron.surrogate, neuron.reset)
    return fused_lif_step(current, u, neuron.decay, threshold, neuron.surrogate, neuron.reset, compile)


class LTCNeuron(nn.Module):
    """Convolutional LTC-SN: ``tau = sigmoid(BN'(conv_k(i + u)))`` then :func:`ltc_step`.

    Input current and output spikes ``[B, C, H, W]``; state ``{"u", "s"}`` (membrane, last spikes), each
    ``[B, C, H, W]``. ``tau_bias`` initialises the bias of ``BN'``, so the initial mean ``tau`` is
    ``sigmoid(tau_bias)``. ``backend``: see :mod:`spikeloc.neurons.backend`; with ``cpu_kernels`` (or ``auto``
    on the CPU) a :class:`SpikingConv2d` runs its BN and this neuron as one CPU operator.
    """

    twin = False  # see set_twin

    def __init__(self, channels: int, tau_kernel: int = 3, threshold: float = 1.0,
                 surrogate: str | dict | Surrogate = "multi_gaussian", reset: F.Reset = "hard",
                 tau_bias: float = 0.0, init_state: InitState = "zeros", backend: Backend = "eager") -> None:
        super().__init__()
        self.init_state = init_state
        self.tau_conv = nn.Conv2d(channels, channels, tau_kernel, padding=tau_kernel // 2, bias=False)
        self.tau_bn = nn.BatchNorm2d(channels)
        nn.init.constant_(self.tau_bn.bias, tau_bias)
        self.threshold, self.surrogate, self.reset = threshold, get_surrogate(surrogate), reset
        self.backend = check(backend, "LTCNeuron", self.kernels_missing())

    def kernels_missing(self) -> str | None:
        """Why the CPU kernels cannot run this neuron's maths (they implement the multi-Gaussian surrogate
        and a float threshold), or None."""
        if type(self.surrogate) is not MultiGaussian:
            return f"the kernels implement the multi-Gaussian surrogate, not {self.surrogate}"
        return None if isinstance(self.threshold, (int, float)) else "the kernels take a float threshold"

    def tau(self, current: Tensor, u: Tensor) -> Tensor:
        """Liquid time constant ``sigmoid(BN'(conv_k(i + u)))``, shaped like ``current``."""
        return torch.sigmoid(self.tau_bn(self.tau_conv(current + u)))

    def forward(self, current: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        if self.twin:
            return twin_output(current)
        u = _membrane(state, current, self.init_state)
        compile = _step(self, current, self.kernels_missing() is None)
        step = F.ltc_step if compile is None else partial(fused_ltc_step, compile=compile)
        spike, u = step(current, u, self.tau(current, u), self.threshold, self.surrogate, self.reset)
        return spike, {"u": u, "s": spike}

    def extra_repr(self) -> str:
        return f"{_spiking_repr(self)}, tau_kernel={self.tau_conv.kernel_size[0]}"


class LTCReadoutNeuron(nn.Module):
    """Non-spiking LTC cell (README, "Learning: SNN vs ANN twin"): ``u' = u + tau (i - u)`` with the
    liquid ``tau`` of :class:`LTCNeuron`, no threshold and no reset; the output is the membrane ``u'``.

    Same parameters (``tau_conv``, ``tau_bn``) as :class:`LTCNeuron`, so the two load each other's
    weights. Current and output ``[B, C, H, W]``; state ``{"u"}``. Spiking-only arguments
    (``threshold``, ``surrogate``, ``reset``) are accepted and ignored.
    """

    twin = False  # see set_twin

    def __init__(self, channels: int, tau_kernel: int = 3, tau_bias: float = 0.0, init_state: InitState = "zeros",
                 **spiking: object) -> None:
        super().__init__()
        _check_ignored(spiking, type(self).__name__)
        self.init_state = init_state
        self.tau_conv = nn.Conv2d(channels, channels, tau_kernel, padding=tau_kernel // 2, bias=False)
        self.tau_bn = nn.BatchNorm2d(channels)
        nn.init.constant_(self.tau_bn.bias, tau_bias)

    tau = LTCNeuron.tau

    def forward(self, current: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        if self.twin:
            return twin_output(current)
        u = _membrane(state, current, self.init_state)
        u = F.readout_step(current, u, self.tau(current, u))
        return u, {"u": u}

    def extra_repr(self) -> str:
        return f"non-spiking, tau_kernel={self.tau_conv.kernel_size[0]}"


SPIKING_ONLY = frozenset({"tau_kernel", "threshold", "surrogate", "reset", "tau_bias", "decay", "rho", "scale",
                          "init_state", "backend"})
REPLACED = {"fused": "backend: fused", "compile": "backend: compiled", "native": "backend: cpu_kernels (or auto)"}


def _check_ignored(kwargs: dict, owner: str, allowed: frozenset = SPIKING_ONLY) -> None:
    _check_replaced(kwargs, owner)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{owner} got unknown neuron arguments {unknown}; spiking-only ones accepted: "
                        f"{sorted(allowed)}")


class ANNNeuron(nn.Module):
    """Stateless non-spiking twin of a neuron: ``y = activation(i)`` (README, "Learning: SNN vs ANN twin").

    ``activation``: ``leaky_relu`` (slope 0.1, as darknet), ``relu`` or ``silu``. Spiking-only
    arguments (threshold, surrogate, reset, tau kernel, leak ...) are accepted and ignored, so one
    config switches a whole network with ``neuron: ann``. Any shape; state is ``{}``.
    """

    ACTIVATIONS = {"leaky_relu": lambda x: torch.nn.functional.leaky_relu(x, 0.1),
                   "relu": torch.relu, "silu": torch.nn.functional.silu}

    def __init__(self, channels: int | None = None, activation: str = "leaky_relu", **spiking: object) -> None:
        super().__init__()
        _check_ignored(spiking, type(self).__name__)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        self.activation = activation

    def forward(self, current: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        return self.ACTIVATIONS[self.activation](current), {}

    def extra_repr(self) -> str:
        return f"activation={self.activation}, stateless"


class LIFNeuron(nn.Module):
    """Leaky integrate-and-fire with a fixed leak ``decay``; any input shape; state ``{"u", "s"}`` (membrane,
    last spikes). ``backend``: ``eager``, ``fused``, ``compiled`` or ``auto`` (fused)."""

    twin = False  # see set_twin

    def __init__(self, channels: int | None = None, decay: float = 0.5, threshold: float = 1.0,
                 surrogate: str | Surrogate = "multi_gaussian", reset: F.Reset = "hard",
                 init_state: InitState = "zeros", backend: Backend = "eager") -> None:
        super().__init__()
        self.init_state = init_state
        self.decay, self.threshold, self.surrogate, self.reset = decay, threshold, get_surrogate(surrogate), reset
        self.backend = check(backend, "LIFNeuron", "LIF neurons have none")

    def forward(self, current: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        if self.twin:
            return twin_output(current)
        u = _membrane(state, current, self.init_state)
        spike, u = _lif_update(self, current, u, self.threshold)
        return spike, {"u": u, "s": spike}

    def extra_repr(self) -> str:
        return f"{_spiking_repr(self)}, decay={self.decay}"


class ALIFNeuron(nn.Module):
    """Adaptive LIF: fixed leak, threshold ``theta = threshold + scale * b`` adapting with ``rho``.

    State ``{"u", "b", "s"}`` (membrane, adaptation, last spikes), all shaped like the input.
    ``backend``: as :class:`LIFNeuron`'s.
    """

    twin = False  # see set_twin

    def __init__(self, channels: int | None = None, decay: float = 0.5, rho: float = 0.9, threshold: float = 1.0,
                 scale: float = 1.8, surrogate: str | Surrogate = "multi_gaussian", reset: F.Reset = "hard",
                 init_state: InitState = "zeros", backend: Backend = "eager") -> None:
        super().__init__()
        self.init_state = init_state
        self.decay, self.rho, self.threshold, self.scale = decay, rho, threshold, scale
        self.surrogate, self.reset = get_surrogate(surrogate), reset
        self.backend = check(backend, "ALIFNeuron", "ALIF neurons have none")

    def forward(self, current: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        if self.twin:
            return twin_output(current)
        u = _membrane(state, current, self.init_state)
        b, s = (_zeros(state, key, current) for key in ("b", "s"))
        theta, b = F.adaptive_threshold(b, s, self.rho, self.threshold, self.scale)
        spike, u = _lif_update(self, current, u, theta)
        return spike, {"u": u, "b": b, "s": spike}

    def extra_repr(self) -> str:
        return f"{_spiking_repr(self)}, decay={self.decay}, rho={self.rho}, scale={self.scale}"


TWIN_SWITCHABLE = (LTCNeuron, LTCReadoutNeuron, LIFNeuron, ALIFNeuron)
NEURONS: dict[str, type[nn.Module]] = {"ltc": LTCNeuron, "lif": LIFNeuron, "alif": ALIFNeuron,
                                       "ltc_readout": LTCReadoutNeuron, "ann": ANNNeuron}


def make_neuron(kind: NeuronKind, channels: int, **kwargs) -> nn.Module:
    """A convolutional neuron by name: ``ltc`` (default of the paper), ``lif``, ``alif``, the
    non-spiking ``ltc_readout`` or the stateless ``ann`` twin."""
    if kind not in NEURONS:
        raise ValueError(f"unknown neuron {kind!r}; expected one of {sorted(NEURONS)}")
    _check_replaced(kwargs, f"neuron {kind!r}")
    return NEURONS[kind](channels, **kwargs)


def _check_replaced(kwargs: dict, owner: str) -> None:
    """A ``TypeError`` naming the ``backend`` that replaced an old ``fused`` / ``compile`` / ``native`` option."""
    old = sorted(set(kwargs) & set(REPLACED))
    if old:
        raise TypeError(f"{owner}: option {old[0]!r} was replaced by the neuron backend: write "
                        f"{REPLACED[old[0]]} (README \"Speed and many GPUs\")")
