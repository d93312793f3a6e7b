"""Which implementation a spiking neuron runs: its ``backend`` (README "Speed and many GPUs").

* ``eager``: the pure-PyTorch step of :mod:`.functional`, the reference every other backend is tested
  against;
* ``fused``: the step as one autograd node (:mod:`.fused`), the same values and gradients to float
  rounding, less memory;
* ``compiled``: the fused step's kernels compiled by ``torch.compile``;
* ``cpu_kernels``: an LTC conv cell's batch norms and neuron as one CPU operator
  (:mod:`.cpu_kernels`; a neuron called on its own runs the fused step); float32 on the CPU only;
* ``auto``: ``cpu_kernels`` where they can run (CPU, float32, no autocast, NCHW tensors, kernels built),
  else ``fused``.

A backend that cannot run where it is asked to raises :class:`BackendError` naming it and the reason;
``auto`` is resolved when the neuron first sees its tensors' device, and each resolution is logged once.
"""
from __future__ import annotations

import functools
import logging
from typing import Literal, get_args

import torch
from torch import Tensor

Backend = Literal["auto", "eager", "fused", "compiled", "cpu_kernels"]
BACKENDS: tuple[str, ...] = get_args(Backend)
log = logging.getLogger(__name__)


class BackendError(ValueError):
    """A neuron backend that is unknown or cannot run here."""


def check(backend: str, owner: str, kernels: str | None) -> str:
    """``backend`` if ``owner`` can run it; ``kernels`` is why it has no CPU kernels (None: it has them)."""
    if backend not in BACKENDS:
        raise BackendError(f"{owner}: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "cpu_kernels" and kernels is not None:
        raise BackendError(f"{owner}: backend 'cpu_kernels' is not available: {kernels}; use fused or compiled")
    return backend


def resolve(backend: str, x: Tensor, kernels: bool) -> str:
    """The backend that runs a neuron asked for ``backend`` on tensors like ``x`` (``kernels``: whether it has
    CPU kernels); raises :class:`BackendError` where ``backend`` cannot run on them."""
    if backend in ("eager", "fused", "compiled"):
        return backend
    autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False
    nchw = x.dim() != 4 or x.shape[1] == 1 or x.stride(1) != 1  # not channels-last (a channel slice still is NCHW)
    return _resolved(backend, x.device.type, x.dtype, autocast, nchw, kernels)


@torch.compiler.assume_constant_result
def _resolved(backend: str, device: str, dtype: torch.dtype, autocast: bool, nchw: bool, kernels: bool) -> str:
    """:func:`_resolve`, a constant to ``torch.compile`` (its arguments are guarded already)."""
    return _resolve(backend, device, dtype, autocast, nchw, kernels)


@functools.lru_cache(maxsize=None)
def _resolve(backend: str, device: str, dtype: torch.dtype, autocast: bool, nchw: bool, kernels: bool) -> str:
    reason = _why_not_kernels(device, dtype, autocast, nchw) if kernels else "no CPU kernels for this neuron"
    if backend == "cpu_kernels" and reason is not None:
        raise BackendError(f"backend 'cpu_kernels' cannot run here: {reason}; use fused, compiled or auto")
    resolved = "cpu_kernels" if reason is None else "fused"
    if backend == "auto":
        why = f" ({reason})" if reason else ""
        log.info("neuron backend auto -> %s on %s, %s%s", resolved, device, dtype, why)
    return resolved


def _why_not_kernels(device: str, dtype: torch.dtype, autocast: bool, nchw: bool) -> str | None:
    """Why the CPU kernels cannot run on such tensors, or None."""
    if device != "cpu":
        return f"the kernels are CPU only, the tensors are on {device}"
    if dtype != torch.float32 or autocast:
        return f"the kernels are float32 only, the tensors are {dtype}{' under autocast' if autocast else ''}"
    if not nchw:
        return "the kernels need NCHW tensors, not channels-last ones (channels_last: false)"
    from .. import kernels
    try:
        kernels.load()
    except kernels.KernelsUnavailable as error:
        return str(error)
    return None


def backends(module: torch.nn.Module) -> dict[str, int]:
    """How many neurons of ``module`` ask for each backend (``{"cpu_kernels": 21, "fused": 2}``)."""
    counts: dict[str, int] = {}
    for sub in module.modules():
        name = getattr(sub, "backend", None)
        if isinstance(name, str) and name in BACKENDS:
            counts[name] = counts.get(name, 0) + 1
    return counts
