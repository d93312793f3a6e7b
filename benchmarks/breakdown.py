"""Where the time of one training batch goes: ``torch.profiler`` events attributed to parts of the step.

Scopes (``record_function`` ranges) are put around the neurons, the model, the loss (target
assignment included), the optimizer (clipping included), FPTT's penalty and update and the
non-finite guard; the whole batch runs inside ``spikeloc::batch``. Every profiler event's *self*
CPU time then goes to:

1. ``compiled`` when it is a kernel ``torch.compile`` generated (``graph_0_cpp_fused_...``, named
   when ``TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1``, as ``train_speed.py`` sets it): batch norm and neuron maths
   fused together, which no name can split (one run within the loss, optimizer, FPTT or guard scope,
   such as FPTT's compiled update, goes to that scope); ``conv`` / ``batchnorm`` when it or an ancestor is a
   convolution / batch-norm op or its backward node (``aten::mkldnn_convolution``,
   ``aten::convolution_backward``, ``ConvolutionBackward0``, ``aten::native_batch_norm_backward`` ...),
   not the engine's wrapper around the node, where gradients that meet at one tensor are added
   (FPTT's penalty gradient and a weight's own, for one: rule 2 places those);
   ``neuron`` when it is an operator of the ``cpu_kernels`` LTC cell (``spikeloc::ltc_...``: batch norm and neuron
   maths together);
2. else the innermost scope around it; a backward node (``evaluate_function: XBackward0``) goes
   to the scope of the forward op that created it: the last op to start with its autograd sequence
   number (an op that creates no node records the number the next node will get);
3. else ``other`` (Lightning, state detaching, logging, Python between ops).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Collection

CATEGORIES = ("conv", "batchnorm", "neuron", "compiled", "model_other", "loss", "optimizer", "fptt", "guard", "other")
SCOPES = {"spikeloc::neuron": "neuron", "spikeloc::model": "model_other", "spikeloc::loss": "loss",
          "spikeloc::optimizer": "optimizer", "spikeloc::fptt": "fptt", "spikeloc::guard": "guard"}
OUTSIDE_MODEL = ("loss", "optimizer", "fptt", "guard")
_CONV = re.compile(r"convolution|conv\d|conv_|mkldnn_conv")
_BACKWARD = "autograd::engine::evaluate_function"


def by_name(name: str) -> str | None:
    """``compiled`` / ``neuron`` / ``conv`` / ``batchnorm`` / ``optimizer`` for ops recognised by name alone,
    else None."""
    if name.startswith(_BACKWARD):  # the engine's wrapper: its node's name, but also the adds of gradients
        return None                 # that meet at one input (the wrapper goes to the forward op's scope)
    lower = name.lower()
    if "cpp_fused" in lower:  # before the others: its name lists the ops fused into it, convolutions' too
        return "compiled"
    if name.startswith("spikeloc::ltc_"):  # the cpu_kernels cell's operators
        return "neuron"
    if _CONV.search(lower):
        return "conv"
    if "batch_norm" in lower or "batchnorm" in lower:
        return "batchnorm"
    if name.startswith("Optimizer."):
        return "optimizer"
    return None


def scoped(name: str, fn: Callable) -> Callable:
    """``fn`` run inside ``record_function(name)``."""
    import torch

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)
    return wrapper


def install_scopes(module: Any, trainer: Any) -> None:
    """Wrap the neurons, model, loss, FPTT, guard and optimizer step of a fitted ``OnlineModule`` in scopes."""
    from spikeloc.neurons.layers import LTCDense
    from spikeloc.neurons.modules import NEURONS
    kinds = tuple(NEURONS.values()) + (LTCDense,)
    for sub in module.modules():
        if isinstance(sub, kinds):
            sub.forward = scoped("spikeloc::neuron", sub.forward)
    network = module.spiking_network()
    if network is not None:
        network.forward = scoped("spikeloc::model", network.forward)
    module.call_step = scoped("spikeloc::model", module.call_step)  # with compile_step, the scopes inside are not traced
    module.step_loss = scoped("spikeloc::loss", module.step_loss)
    if module.fptt is not None:
        for name in ("penalty", "stage", "accept"):
            setattr(module.fptt, name, scoped("spikeloc::fptt", getattr(module.fptt, name)))
    trainer.strategy.optimizer_step = scoped("spikeloc::optimizer", trainer.strategy.optimizer_step)
    make_guard = module.guard_for

    def scoped_guard(optimizer: Any) -> Any:
        guard = make_guard(optimizer)
        if not hasattr(guard.begin, "__wrapped__"):
            guard.begin, guard.commit = (scoped("spikeloc::guard", f) for f in (guard.begin, guard.commit))
        return guard

    module.guard_for = scoped_guard


def _category(event: Any, backward_scope: dict[int, str | None], names: bool = True) -> str:
    """The category of ``event`` (see the module doc); ``names=False``: of its scope alone."""
    node = event
    while node is not None:
        found = (by_name(node.name) if names else None) or SCOPES.get(node.name)
        if found is None and node.name.startswith(_BACKWARD):
            found = backward_scope.get(node.sequence_nr)
        if found == "compiled":
            scope = _category(node, backward_scope, names=False)
            return scope if scope in OUTSIDE_MODEL else found
        if found is not None:
            return found
        node = node.cpu_parent
    return "other"


def _forward_scope(event: Any) -> str | None:
    """The innermost scope around a forward op; ``"backward"`` for an op run by a backward node (the
    profiler gives those the node's sequence number too)."""
    node = event
    while node is not None:
        if node.name.startswith(_BACKWARD):
            return "backward"
        if node.name in SCOPES:
            return SCOPES[node.name]
        node = node.cpu_parent
    return None


def attribute(events: list[Any]) -> dict[str, float]:
    """Self CPU microseconds per category over ``events`` (``prof.events()``)."""
    backward_scope: dict[int, str | None] = {}
    for event in sorted(events, key=lambda e: e.time_range.start):
        scope = _forward_scope(event) if event.sequence_nr >= 0 else "backward"
        if scope != "backward":
            backward_scope[event.sequence_nr] = scope
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        totals[_category(event, backward_scope)] += event.self_cpu_time_total
    return totals


def profiler_callback(batch_indices: Collection[int]) -> Any:
    """A Lightning callback that installs the scopes and profiles the batches ``batch_indices``.

    After the fit its ``totals`` hold the microseconds per category (see :func:`attribute`) of the
    profiled batches' mean (None if none was profiled).
    """
    import lightning.pytorch as pl
    import torch

    class StepProfiler(pl.Callback):
        def __init__(self) -> None:
            self.totals: dict[str, float] | None = None
            self._sums = dict.fromkeys(CATEGORIES, 0.0)
            self._count = 0
            self._profile: Any = None
            self._range: Any = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            install_scopes(pl_module, trainer)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, index: int) -> None:
            if index in batch_indices:
                self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self._profile.__enter__()
                self._range = torch.profiler.record_function("spikeloc::batch")
                self._range.__enter__()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, index: int) -> None:
            if index in batch_indices:
                self._range.__exit__(None, None, None)
                self._profile.__exit__(None, None, None)
                for category, value in attribute(list(self._profile.events())).items():
                    self._sums[category] += value
                self._count += 1
                self.totals = {category: value / self._count for category, value in self._sums.items()}

    return StepProfiler()


def shares(totals: dict[str, float]) -> dict[str, float]:
    """Fractions of the profiled CPU time per category (they sum to 1)."""
    total = sum(totals.values()) or 1.0
    return {key: round(value / total, 4) for key, value in totals.items()}
