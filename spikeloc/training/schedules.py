"""Learning-rate schedules that size themselves to the training they schedule."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR


class PhaseCosineLR(CosineAnnealingLR):
    """Cosine decay from the initial learning rate to ``eta_min`` over exactly its phase.

    The task module sets ``T_max`` to the phase's scheduler steps when the phase begins (the whole run,
    or the twin or spiking phase with ``twin_scheduler``; README "Learning: SNN vs ANN twin"), so one
    config fits any dataset size, ``max_epochs``, ``twin_epochs`` or ``limit_train_batches``. The sized
    ``T_max`` is part of the scheduler's state, so a resumed run keeps it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        super().__init__(optimizer, T_max=1, eta_min=eta_min, last_epoch=last_epoch)
        self.sized = False

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= 0 and not self.sized:
            raise RuntimeError("PhaseCosineLR steps before its length is known: it is sized by the task module "
                               "(an OnlineModule) when its phase begins")
        super().step(epoch)

    def fit_to(self, steps: int) -> None:
        """Decay over ``steps`` scheduler steps from now (called before the phase's first step)."""
        if self.last_epoch != 0:
            raise RuntimeError(f"PhaseCosineLR is sized before its first step, not after {self.last_epoch}")
        self.T_max, self.sized = steps, True
