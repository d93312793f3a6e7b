"""Firing statistics and synaptic-operation (SynOps) energy estimates, from the state each step returns.

Every spiking neuron keeps its last spikes in its state (``state["s"]``). Give :class:`FiringStats` the
module that advances ONE time step (backbone, detector) and, after every step, its input, the state it
was given and the state it returned::

    stats = FiringStats(model)
    for t in range(T):
        out, new_state = model(x[t], state)
        stats.update(x[t], state, new_state)  # a state of None starts a sequence
        state = new_state
    summary = stats.compute(time_steps=None)  # per-layer rates, SynOps, energy per sample

So the statistics read what the trained code computed, whatever its backend or ``torch.compile``.
Where each layer's spikes sit in the state and where they go is learned once per input size by
:mod:`.wiring` (one eager probe of the model, outside the measured steps).

Counting rules:

* spiking layers (LTC/LIF/ALIF neurons, dense LTC): spikes / neurons -> firing rate;
* every ``Conv``/``Linear`` costs ``MACs = output elements x fan-in``. If its input is made of spikes
  (directly, or joined, sliced, pooled or upsampled), each spike of channel ``c`` of a layer costs the
  ``MACs / input elements`` of every operation it reaches, once per input element it becomes:
  ``SynOps = sum over layers and channels of spikes x fan-out`` accumulates (AC). A max-pooled window
  counts each of its spikes (an upper bound where a window holds several). Otherwise (images, tau-convs
  fed ``i + u``, heads fed membranes or rates) every MAC is a real multiply-accumulate;
* energy (45 nm, Horowitz 2014): 0.9 pJ per AC, 4.6 pJ per MAC; the equivalent ANN does all
  MACs as MACs. BatchNorm (foldable), pooling and neuron element-wise maths are not counted.

``FiringStats`` is a ``torchmetrics.Metric``: its counts are device tensors summed across DDP
ranks before ``compute`` (no host sync in :meth:`~FiringStats.update`; ``compute`` syncs once).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .wiring import OP_TYPES, SPIKING_TYPES, Wiring, fan_in, probe

ENERGY_AC_PJ = 0.9
ENERGY_MAC_PJ = 4.6
__all__ = ["ENERGY_AC_PJ", "ENERGY_MAC_PJ", "FiringStats", "OP_TYPES", "SPIKING_TYPES", "fan_in"]


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class FiringStats(Metric):
    """Accumulates per-layer spike counts and per-layer SynOps / MACs of ``model`` from the states it returns.

    The states live on the model's device: ``spikes`` / ``neurons`` ``[L]`` per spiking layer,
    ``ops`` ``[O, 2]`` (SynOps, analog MACs) and ``dense_macs`` ``[O]`` per conv / linear layer,
    ``sample_steps`` and ``sequences`` (all summed across ranks).
    """

    full_state_update = False

    def __init__(self, model: nn.Module, spiking_types: tuple[type[nn.Module], ...] = SPIKING_TYPES,
                 **kwargs: Any) -> None:
        super().__init__(**{"compute_with_cache": False, **kwargs})
        device = next(model.parameters(), torch.empty(0)).device
        dtype = _accumulator_dtype(device)
        self._model = (model,)  # a tuple: not a submodule of the metric
        self._types = spiking_types
        spiking = [name for name, m in model.named_modules() if isinstance(m, spiking_types)]
        self.layer_names = [name.removesuffix(".neuron") for name in spiking]
        self.op_names = [n for n, m in model.named_modules() if isinstance(m, OP_TYPES) and
                         not isinstance(m, spiking_types)]
        for state, shape in (("spikes", [len(spiking)]), ("neurons", [len(spiking)]), ("ops", [len(self.op_names), 2]),
                             ("dense_macs", [len(self.op_names)]), ("sample_steps", []), ("sequences", [])):
            self.add_state(state, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")
        self.to(device)
        self._wirings: dict[tuple, Wiring] = {}

    def watches(self, module: nn.Module) -> bool:
        """Whether ``module`` is the model these statistics count."""
        return module is self._model[0]

    def wiring(self, x: Tensor) -> Wiring:
        """The model's wiring for inputs shaped like ``x`` (probed on first sight of the size)."""
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        if key not in self._wirings:
            self._wirings[key] = probe(self._model[0], x[:1], self._types).to(self.ops.device, self.ops.dtype)
        return self._wirings[key]

    def update(self, x: Tensor, state_in: Any, state_out: Any) -> None:
        """Count one step: ``x`` the model's input ``[B, ...]``, ``state_in`` the state it was given (None
        starts a sequence), ``state_out`` the state it returned."""
        wiring = self.wiring(x)
        batch = x.shape[0]
        self.sample_steps += batch
        if state_in is None:
            self.sequences += batch
        with torch.no_grad():
            per_channel = [wiring.channel_counts(state_out, index) for index in range(len(wiring.layers))]
            counts = torch.cat(per_channel).to(self.ops.dtype) if per_channel else self.ops.new_zeros(0)
            layer_totals = torch.stack([c.sum() for c in per_channel]) if per_channel else counts
            if wiring.layers:  # index tensors on the device: no copy from the host per step
                self.spikes.index_add_(0, wiring.layer_index, layer_totals.to(self.spikes.dtype))
                self.neurons.index_add_(0, wiring.layer_index, wiring.neurons * batch)
            if wiring.ops:
                synops = wiring.fan_out @ counts if counts.numel() else torch.zeros_like(wiring.analog_macs)
                self.ops.index_add_(0, wiring.op_index, torch.stack([synops, wiring.analog_macs * batch], dim=1))
                self.dense_macs.index_add_(0, wiring.op_index, wiring.macs * batch)

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
