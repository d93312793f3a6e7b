"""Per-layer firing rates while training, with warnings for silent and saturated layers.

A spiking network that starves (layers firing well under 1 %, whole channels never firing) or
saturates (every neuron firing at every step) learns little, and evaluation-time statistics show
it only after the run. :class:`FiringMonitor` counts :class:`~spikeloc.metrics.FiringStats` of the
module's ``firing_network()`` from the states its steps return (``OnlineModule.firing_meters``) for one
training batch every ``every_n_batches``, logs ``firing/<layer>`` and ``firing/mean`` and warns (once per
layer and kind) about layers outside ``[silent_below, saturated_above]``. The measured batches train as
every other one does; between them nothing is counted (no cost).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from spikeloc.metrics import FiringStats


def firing_problems(rates: dict[str, float], silent_below: float, saturated_above: float) -> dict[str, str]:
    """Layer -> ``"silent"`` (rate < ``silent_below``) or ``"saturated"`` (rate > ``saturated_above``)."""
    problems = {}
    for layer, rate in rates.items():
        if rate < silent_below:
            problems[layer] = "silent"
        elif rate > saturated_above:
            problems[layer] = "saturated"
    return problems


class FiringMonitor(pl.Callback):
    """Log per-layer firing rates (spikes per neuron per step) of training batches and warn on bad layers.

    Args:
        every_n_batches: measure the training batches whose index is a multiple of this.
        silent_below: a layer firing less than this fraction is reported silent.
        saturated_above: a layer firing more than this fraction is reported saturated.
    """

    def __init__(self, every_n_batches: int = 50, silent_below: float = 0.001, saturated_above: float = 0.9) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        if not 0 <= silent_below < saturated_above <= 1:
            raise ValueError(f"need 0 <= silent_below < saturated_above <= 1, got {silent_below}, {saturated_above}")
        self.every_n_batches, self.silent_below, self.saturated_above = every_n_batches, silent_below, saturated_above
        self.last_rates: dict[str, float] = {}
        self._stats: FiringStats | None = None
        self._counting = False  # whether the batch under way is measured
        self._warned: set[tuple[str, str]] = set()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        network = pl_module.firing_network() if hasattr(pl_module, "firing_network") else None
        if network is None or batch_idx % self.every_n_batches or not hasattr(pl_module, "firing_meters"):
            return
        if self._stats is None or not self._stats.watches(network):
            self._stats = FiringStats(network)  # kept: its wiring is probed once
        self._stats.reset()
        pl_module.firing_meters.append(self._stats)
        self._counting = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._counting:
            return
        self._stop(pl_module)
        summary = self._stats.compute()
        self.last_rates = summary["firing_rate"]
        if not self.last_rates:  # a non-spiking twin: nothing fires
            return
        for layer, rate in self.last_rates.items():
            pl_module.log(f"firing/{layer}", rate, on_step=True, on_epoch=False)
        pl_module.log("firing/mean", summary["mean_firing_rate"], on_step=True, on_epoch=False)
        for layer, kind in firing_problems(self.last_rates, self.silent_below, self.saturated_above).items():
            if (layer, kind) not in self._warned:
                self._warned.add((layer, kind))
                rank_zero_warn(f"layer {layer} is {kind}: firing rate {self.last_rates[layer]:.4%} at training step "
                               f"{trainer.global_step}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._counting:
            self._stop(pl_module)

    def _stop(self, pl_module: pl.LightningModule) -> None:
        pl_module.firing_meters.remove(self._stats)
        self._counting = False
