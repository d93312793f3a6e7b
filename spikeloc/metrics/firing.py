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

``FiringStats`` is a ``torchmetrics.Metric``: its counts are device tensors summed across DDP
ranks before ``compute`` (no host sync in the hooks; ``compute`` syncs once).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric

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


class FiringStats(Metric):
    """Accumulates per-layer spike counts and per-layer SynOps / MACs of ``model`` while it runs.

    The states live on the model's device: ``spikes`` / ``neurons`` ``[L]`` per spiking layer,
    ``ops`` ``[O, 2]`` (SynOps, analog MACs) and ``dense_macs`` ``[O]`` per conv / linear layer,
    ``sample_steps`` and ``sequences`` (all summed across ranks).
    """

    full_state_update = False

    def __init__(self, model: nn.Module, spiking_types: tuple[type[nn.Module], ...] = SPIKING_TYPES,
                 **kwargs: Any) -> None:
        super().__init__(**{"compute_with_cache": False, **kwargs})  # hooks count outside update()
        device = next(model.parameters(), torch.empty(0)).device
        dtype = _accumulator_dtype(device)
        spiking = [(n, m) for n, m in model.named_modules() if isinstance(m, spiking_types)]
        ops = [(n, m) for n, m in model.named_modules() if isinstance(m, OP_TYPES) and not isinstance(m, spiking_types)]
        self.layer_names = [name.removesuffix(".neuron") for name, _ in spiking]
        self.op_names = [name for name, _ in ops]
        for state, shape in (("spikes", [len(spiking)]), ("neurons", [len(spiking)]), ("ops", [len(ops), 2]),
                             ("dense_macs", [len(ops)]), ("sample_steps", []), ("sequences", [])):
            self.add_state(state, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")
        self.to(device)
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._count_samples, with_kwargs=True)]
        self._handles += [m.register_forward_hook(self._spike_hook(i)) for i, (_, m) in enumerate(spiking)]
        self._handles += [m.register_forward_hook(self._ops_hook(i, fan_in(m))) for i, (_, m) in enumerate(ops)]

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to add by hand: the forward hooks count while the model runs."""

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
        self._update_count += 1
        self.sample_steps += batch
        if (args[1] if len(args) > 1 else kwargs.get("state")) is None:  # a fresh state starts a sequence
            self.sequences += batch

    def _spike_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: tuple[Tensor, Any]) -> None:
            spikes = output[0]
            with torch.no_grad():
                self.spikes[index] += torch.count_nonzero(spikes)
            self.neurons[index] += spikes.numel()
        return hook

    def _ops_hook(self, index: int, ops_per_output: int):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            x = inputs[0]
            macs = output.numel() * ops_per_output
            with torch.no_grad():
                nonzero = torch.count_nonzero(x).to(self.ops.dtype)
                binary = (torch.count_nonzero(x == 1) == nonzero).to(nonzero.dtype)  # 1: input is spikes
                self.ops[index] += torch.stack([binary * nonzero * (macs / x.numel()), (1 - binary) * float(macs)])
            self.dense_macs[index] += macs
        return hook

    # ---- summary (one host sync) --------------------------------------------------------------
    def compute(self, time_steps: int | None = 1) -> dict[str, Any]:
        """Summary per sample of ``time_steps`` steps (per sample-step when 1; ``None``: per sample
        of the sequences seen, whatever their length).

        Returns ``firing_rate`` (layer -> spikes per neuron per step), ``mean_firing_rate``,
        ``synops`` / ``macs`` / ``ann_macs`` per sample, ``synops_per_layer``, energies
        ``energy_snn_mj`` / ``energy_ann_mj`` (millijoules per sample) and ``energy_ratio`` (ANN / SNN).
        """
        flat = torch.cat([self.spikes, self.neurons, self.ops.flatten(), self.dense_macs,
                          self.sample_steps[None], self.sequences[None]]).double().cpu()
        spikes, neurons, ops, dense_macs, (sample_steps, sequences) = flat.split(
            [len(self.spikes), len(self.neurons), self.ops.numel(), len(self.dense_macs), 2])
        ops = ops.view(-1, 2)
        steps = max(float(sample_steps), 1.0)
        per_sample = (time_steps if time_steps is not None else steps / max(float(sequences), 1.0)) / steps
        synops, macs = (float(v) * per_sample for v in ops.sum(dim=0))
        energy_snn = (synops * ENERGY_AC_PJ + macs * ENERGY_MAC_PJ) * 1e-9
        energy_ann = float(dense_macs.sum()) * per_sample * ENERGY_MAC_PJ * 1e-9
        seen = neurons > 0
        return {
            "firing_rate": {name: float(s / n) for name, s, n, ok in zip(self.layer_names, spikes, neurons, seen)
                            if ok},
            "mean_firing_rate": float(spikes.sum() / max(float(neurons.sum()), 1.0)),
            "sample_steps": int(sample_steps),
            "synops": synops, "macs": macs, "ann_macs": float(dense_macs.sum()) * per_sample,
            "synops_per_layer": {name: float(v) * per_sample for name, v, m in zip(self.op_names, ops[:, 0], dense_macs)
                                 if m > 0},
            "energy_snn_mj": energy_snn, "energy_ann_mj": energy_ann,
            "energy_ratio": energy_ann / energy_snn if energy_snn > 0 else float("inf"),
        }
