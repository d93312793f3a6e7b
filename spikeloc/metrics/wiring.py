"""Where a model's spikes are kept and where they go: what :class:`~.firing.FiringStats` needs to read firing
rates and SynOps from the state a step returns.

:func:`probe` runs two eager steps of the model on one sample (no gradients, evaluation mode, the
random-number state restored after, every neuron on its ``eager`` backend, float32 without autocast; the
model is left as it was) with forward hooks that, for this probe only, replace each spiking layer's spikes by codes: ``BASE``
everywhere, and ``2 BASE + k`` at the first element of channel ``k`` (numbered over all layers). Pooling,
slicing, joining and nearest upsampling carry the codes to the convolutions and linear layers, so each
operation's input shows which channels' spikes reach it and how many input elements one spike becomes;
an input with any other value (an image, a membrane, a mean) is analog. The second step's counts are
kept (recurrent inputs come from the state). The layers' spikes are then found in the returned state
(``state["s"]`` of each neuron) by identity with the codes.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from spikeloc.neurons import ALIFNeuron, LIFNeuron, LTCDense, LTCNeuron

SPIKING_TYPES: tuple[type[nn.Module], ...] = (LTCNeuron, LIFNeuron, ALIFNeuron, LTCDense)
OP_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BASE = 2.0 ** 16  # codes up to 2 BASE + channels stay exact in float32; a mean of codes lies between BASE and 2 BASE


def fan_in(module: nn.Module) -> int:
    """Multiply-accumulates per output element of a conv (``C_in / groups x kernel``) or linear."""
    if isinstance(module, nn.Linear):
        return module.in_features
    kernel = 1
    for size in module.kernel_size:
        kernel *= size
    return module.in_channels // module.groups * kernel


@dataclass
class Wiring:
    """A model's wiring for one input size. ``layers``: indices of the spiking layers found in the state,
    ``paths``: where each one's spikes are in it, ``neurons`` ``[len(layers)]`` per sample; ``ops``: indices of
    the operations that ran, ``fan_out`` ``[len(ops), channels]``: SynOps per spike of each channel (all
    layers' channels in ``layers`` order), ``analog_macs`` / ``macs`` ``[len(ops)]`` per sample."""

    layers: list[int]
    paths: list[tuple]
    neurons: Tensor
    ops: list[int]
    fan_out: Tensor
    analog_macs: Tensor
    macs: Tensor
    layer_index: Tensor | None = None  # ``layers`` and ``ops`` as index tensors on the statistics' device
    op_index: Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> "Wiring":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("neurons", "fan_out", "analog_macs", "macs"):
            moved[name] = moved[name].to(device, dtype)
        moved["layer_index"] = torch.tensor(self.layers, dtype=torch.long, device=device)
        moved["op_index"] = torch.tensor(self.ops, dtype=torch.long, device=device)
        return Wiring(**moved)

    def channel_counts(self, state: Any, index: int) -> Tensor:
        """Spikes per channel, summed over the batch and positions, of found layer ``index`` in ``state``."""
        spikes = state
        for key in self.paths[index]:
            spikes = spikes[key]
        return spikes.sum(dim=[d for d in range(spikes.dim()) if d != 1]) if spikes.dim() > 1 else spikes.sum()[None]


class _Recorder:
    """The forward hooks of a probe: codes for spikes, counts and MACs for operations."""

    def __init__(self, spiking: list[nn.Module], ops: list[nn.Module]) -> None:
        self.offsets: dict[int, tuple[int, int]] = {}  # layer -> (first channel number, channels)
        self.channels, self.codes, self.seen = 0, {}, {}
        self.handles = [m.register_forward_hook(self._code(i)) for i, m in enumerate(spiking)]
        self.handles += [m.register_forward_hook(self._count(j, fan_in(m))) for j, m in enumerate(ops)]

    def _code(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: tuple[Tensor, dict]) -> tuple[Tensor, dict] | None:
            spikes, state = output
            if not isinstance(state, dict) or "s" not in state:  # not spiking (e.g. the ANN twin)
                return None
            channels = spikes.shape[1] if spikes.dim() > 1 else 1
            if index not in self.offsets:
                self.offsets[index] = (self.channels, channels)
                self.channels += channels
            start = self.offsets[index][0]
            code = torch.full(spikes.shape, BASE, dtype=torch.float32, device=spikes.device)
            code.view(code.shape[0], channels, -1)[:, :, 0] = 2 * BASE + torch.arange(
                start, start + channels, device=spikes.device, dtype=torch.float32)
            code = code.to(spikes.dtype)
            self.codes[id(code)] = index
            return code, {**state, "s": code}
        return hook

    def _count(self, index: int, per_output: int):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            x = inputs[0].float()
            samples = x.shape[0]
            coded = (x >= 2 * BASE) & (x < 2 * BASE + self.channels) & (x == x.round())
            spiking = bool(((x == BASE) | coded).all())
            macs = output.numel() * per_output / samples
            reach = torch.bincount((x[coded] - 2 * BASE).long(), minlength=self.channels).double().cpu()
            fan_out = reach * (macs / x.numel()) if spiking else torch.zeros(self.channels, dtype=torch.float64)
            old_fan_out, old_analog, old_macs = self.seen.get(index, (fan_out[:0], 0.0, 0.0))
            fan_out[:old_fan_out.numel()] += old_fan_out  # a module called twice in a step: both calls
            self.seen[index] = (fan_out, old_analog + (0.0 if spiking else macs), old_macs + macs)
        return hook

    def clear(self) -> None:
        self.codes, self.seen = {}, {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def _probing(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Evaluation mode, eager neurons and the random-number state, all given back after."""
    modes = [(m, m.training) for m in model.modules()]
    backends = [(m, m.backend) for m in model.modules() if isinstance(getattr(m, "backend", None), str)]
    model.eval()
    for module, _ in backends:
        module.backend = "eager"
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autocast(device.type, enabled=False):  # the codes must stay exact: float32
            yield
    finally:
        for module, training in modes:
            module.training = training
        for module, backend in backends:
            module.backend = backend


def _paths(state: Any, codes: dict[int, int], prefix: tuple = ()) -> Iterator[tuple[int, tuple]]:
    """``(layer, path)`` of every code tensor in ``state``."""
    if isinstance(state, Tensor):
        if id(state) in codes:
            yield codes[id(state)], prefix
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _paths(value, codes, prefix + (key,))
    elif isinstance(state, (list, tuple)):
        for key, value in enumerate(state):
            yield from _paths(value, codes, prefix + (key,))


@torch.no_grad()
def probe(model: nn.Module, x: Tensor, spiking_types: tuple[type[nn.Module], ...] = SPIKING_TYPES) -> Wiring:
    """The wiring of ``model`` (one time step per call: ``model(x, state) -> (output, state)``) for inputs
    shaped like ``x`` ``[1, ...]``."""
    if any(p.is_floating_point() and p.dtype not in (torch.float32, torch.float64) for p in model.parameters()):
        model, x = copy.deepcopy(model).float(), x.float()  # codes are exact integers in float32 only
    spiking = [m for m in model.modules() if isinstance(m, spiking_types)]
    ops = [m for m in model.modules() if isinstance(m, OP_TYPES) and not isinstance(m, spiking_types)]
    recorder = _Recorder(spiking, ops)
    try:
        with _probing(model, x.device):
            _, state = model(x, None)
            recorder.clear()  # the second step, with the first one's state, is the one counted
            _, state = model(x, state)
    finally:
        recorder.remove()
    found = sorted(_paths(state, recorder.codes))
    columns = [recorder.offsets[layer] for layer, _ in found]  # (first channel, channels) in ``found``'s order
    ran = sorted(recorder.seen)
    rows = [torch.nn.functional.pad(recorder.seen[op][0], (0, recorder.channels - recorder.seen[op][0].numel()))
            for op in ran]
    fan_out = torch.stack([torch.cat([row[start:start + count] for start, count in columns] or [row[:0]])
                           for row in rows]) if rows else torch.zeros(0, sum(c for _, c in columns))
    return Wiring([layer for layer, _ in found], [path for _, path in found],
                  torch.tensor([state_numel(state, path) for _, path in found], dtype=torch.float64), ran,
                  fan_out.double(), torch.tensor([recorder.seen[op][1] for op in ran], dtype=torch.float64),
                  torch.tensor([recorder.seen[op][2] for op in ran], dtype=torch.float64))


def state_numel(state: Any, path: tuple) -> float:
    """Elements per sample of the tensor at ``path`` in ``state``."""
    for key in path:
        state = state[key]
    return state.numel() / state.shape[0]
