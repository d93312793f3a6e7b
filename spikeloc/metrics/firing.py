"""Firing statistics and synaptic-operation (SynOps) energy estimates, collected by forward hooks.

Attach to the module that advances ONE time step (backbone, detector) and run it as usual::

    stats = FiringStats(model)
    for t in range(T): out, state = model(x[t], state)
    summary = stats.compute(time_steps=None)  # per-layer rates, SynOps, energy per sample
    stats.remove()

A call with a fresh state (``state=None``, the backbone contract) starts a sequence, so the
statistics per sample need no bookkeeping of T by the caller.

Counting rules:

* spiking layers (LTC/LIF/ALIF neurons, dense LTC): spikes / neurons -> firing rate;
* every ``Conv``/``Linear`` costs ``MACs = output elements x fan-in``. If its input is binary
  (spikes) the layer does ``SynOps = input firing rate x MACs`` accumulates (AC); otherwise
  (images, tau-convs fed ``i + u``, heads fed rates) every MAC is a real multiply-accumulate;
* energy (45 nm, Horowitz 2014): 0.9 pJ per AC, 4.6 pJ per MAC; the equivalent ANN does all
  MACs as MACs. BatchNorm (foldable), pooling and neuron element-wise maths are not counted.

Data-dependent counts stay on the device (no host sync in the hooks); ``compute`` syncs once.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from spikeloc.neurons import ALIFNeuron, LIFNeuron, LTCDense, LTCNeuron

ENERGY_AC_PJ = 0.9
ENERGY_MAC_PJ = 4.6
SPIKING_TYPES: tuple[type[nn.Module], ...] = (LTCNeuron, LIFNeuron, ALIFNeuron, LTCDense)
OP_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fan_in(module: nn.Module) -> int:
    """Multiply-accumulates per output element of a conv (``C_in / groups x kernel``) or linear."""
    if isinstance(module, nn.Linear):
        return module.in_features
    kernel = 1
    for size in module.kernel_size:
        kernel *= size
    return module.in_channels // module.groups * kernel


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class FiringStats:
    """Accumulates per-layer spike counts and per-layer SynOps / MACs of ``model`` while it runs."""

    def __init__(self, model: nn.Module, spiking_types: tuple[type[nn.Module], ...] = SPIKING_TYPES) -> None:
        self.model = model
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._count_samples, with_kwargs=True)]
        for name, module in model.named_modules():
            if isinstance(module, spiking_types):
                self._handles.append(module.register_forward_hook(self._spike_hook(name.removesuffix(".neuron"))))
            elif isinstance(module, OP_TYPES):
                self._handles.append(module.register_forward_hook(self._ops_hook(name, fan_in(module))))
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far (hooks stay attached)."""
        self.sample_steps = 0  # samples x steps seen
        self.sequences = 0     # samples whose sequence started (called with a fresh state)
        self._spikes: dict[str, Tensor] = {}    # layer -> spike count (device, int64)
        self._neurons: dict[str, int] = {}      # layer -> neuron-steps seen
        self._ops: dict[str, Tensor] = {}       # layer -> [SynOps, analog MACs] (device, float)
        self._dense_macs: dict[str, int] = {}   # layer -> MACs if every op were a MAC

    def remove(self) -> None:
        """Detach all hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FiringStats":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # ---- hooks: device tensors only, never .item() ------------------------------------------
    def _count_samples(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)), None)
        batch = first.shape[0] if first is not None and first.dim() > 0 else 1
        self.sample_steps += batch
        if (args[1] if len(args) > 1 else kwargs.get("state")) is None:
            self.sequences += batch

    def _spike_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: tuple[Tensor, Any]) -> None:
            spikes = output[0]
            with torch.no_grad():
                count = torch.count_nonzero(spikes)
            self._spikes[name] = count if name not in self._spikes else self._spikes[name] + count
            self._neurons[name] = self._neurons.get(name, 0) + spikes.numel()
        return hook

    def _ops_hook(self, name: str, ops_per_output: int):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            x = inputs[0]
            macs = output.numel() * ops_per_output
            with torch.no_grad():
                nonzero = torch.count_nonzero(x).to(_accumulator_dtype(x.device))
                binary = (torch.count_nonzero(x == 1) == nonzero).to(nonzero.dtype)  # 1: input is spikes
                counts = torch.stack([binary * nonzero * (macs / x.numel()), (1 - binary) * float(macs)])
            self._ops[name] = counts if name not in self._ops else self._ops[name] + counts
            self._dense_macs[name] = self._dense_macs.get(name, 0) + macs
        return hook

    # ---- summary (one host sync) --------------------------------------------------------------
    def compute(self, time_steps: int | None = 1) -> dict[str, Any]:
        """Summary per sample of ``time_steps`` steps (per sample-step when 1; ``None``: per sample
        of the sequences seen, whatever their length).

        Returns ``firing_rate`` (layer -> spikes per neuron per step), ``mean_firing_rate``,
        ``synops`` / ``macs`` / ``ann_macs`` per sample, ``synops_per_layer``, energies
        ``energy_snn_mj`` / ``energy_ann_mj`` (millijoules per sample) and ``energy_ratio`` (ANN / SNN).
        """
        spikes = {name: float(count) for name, count in zip(self._spikes, self._to_host(self._spikes))}
        ops = dict(zip(self._ops, self._to_host(self._ops)))
        per_sample = (time_steps if time_steps is not None else self.sample_steps / max(self.sequences, 1)) \
            / max(self.sample_steps, 1)
        synops = sum(float(v[0]) for v in ops.values()) * per_sample
        macs = sum(float(v[1]) for v in ops.values()) * per_sample
        ann_macs = sum(self._dense_macs.values()) * per_sample
        energy_snn = (synops * ENERGY_AC_PJ + macs * ENERGY_MAC_PJ) * 1e-9
        energy_ann = ann_macs * ENERGY_MAC_PJ * 1e-9
        return {
            "firing_rate": {name: spikes[name] / self._neurons[name] for name in spikes},
            "mean_firing_rate": sum(spikes.values()) / max(sum(self._neurons.values()), 1),
            "sample_steps": self.sample_steps,
            "synops": synops, "macs": macs, "ann_macs": ann_macs,
            "synops_per_layer": {name: float(v[0]) * per_sample for name, v in ops.items()},
            "energy_snn_mj": energy_snn, "energy_ann_mj": energy_ann,
            "energy_ratio": energy_ann / energy_snn if energy_snn > 0 else float("inf"),
        }

    @staticmethod
    def _to_host(values: dict[str, Tensor]) -> list[Tensor]:
        """All accumulators to the CPU in one transfer per dtype."""
        if not values:
            return []
        return list(torch.stack([v.to(torch.float64 if v.device.type != "mps" else torch.float32)
                                 for v in values.values()]).cpu())
