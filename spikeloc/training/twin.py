"""The twin phase: a network trains first as its ANN twin, then as the SNN from the twin's weights
(docs/learning.md). :class:`OnlineModule` adds :class:`TwinPhase` to the trainer (``configure_callbacks``)
when its ``twin_fraction`` or ``twin_epochs`` asks for one."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from .schedules import fit_schedule

if TYPE_CHECKING:
    from .loop import OnlineModule


class TwinPhase(pl.Callback):
    """Train the first ``epochs`` epochs (or ``round(fraction * max_epochs)``) as the ANN twin: every spiking
    neuron ``leaky_relu``, one time step, one update per batch; then spiking from those weights. With the
    module's ``twin_scheduler`` the spiking phase starts as a run of its own (fresh optimizer and FPTT state,
    the learning rate back at its start, ``scheduler`` from its first step); each phase's
    :class:`~spikeloc.training.schedules.PhaseCosineLR` is sized to that phase."""

    def __init__(self, fraction: float = 0.0, epochs: int = 0) -> None:
        self.fraction, self.epochs = fraction, epochs

    def setup(self, trainer: pl.Trainer, pl_module: OnlineModule, stage: str) -> None:
        if stage == "fit" and self.fraction:
            self.epochs = round(self.fraction * trainer.max_epochs)
        if stage == "fit":
            rank_zero_info(f"twin phase: {self.epochs} epochs of {trainer.max_epochs}, then "
                           f"{max(trainer.max_epochs - self.epochs, 0)} spiking epochs")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: OnlineModule) -> None:
        pl_module.set_twin_phase(trainer.current_epoch < self.epochs)
        own = pl_module.twin_scheduler_factory is not None
        if own and not pl_module.twin_active and not pl_module.spiking_phase_started:
            pl_module.start_spiking_phase()
            fit_schedule(trainer, pl_module, "scheduler", trainer.max_epochs - self.epochs)
        elif trainer.current_epoch == 0:
            twin = own and not pl_module.spiking_phase_started
            fit_schedule(trainer, pl_module, "twin_scheduler" if twin else "scheduler",
                         self.epochs if twin else trainer.max_epochs)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: OnlineModule) -> None:
        if pl_module.twin_active:
            warnings.warn(f"training ended in the ANN twin phase (max_epochs <= the twin phase's {self.epochs} "
                          "epochs): the checkpoints hold the twin's weights and fresh tau-convs", stacklevel=2)
            pl_module.set_twin_phase(False)
