"""Learning-rate schedules that size themselves to the training they schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import CosineAnnealingLR


class PhaseCosineLR(CosineAnnealingLR):
    """Cosine decay from the initial learning rate to ``eta_min`` over exactly its phase, after an
    optional linear warm-up over the phase's first ``warmup`` fraction.

    The task module sets ``T_max`` to the phase's scheduler steps when the phase begins (the whole run,
    or the twin or spiking phase with ``twin_scheduler``; docs/learning.md), so one
    config fits any dataset size, ``max_epochs``, ``twin_epochs`` or ``limit_train_batches``. The sized
    ``T_max`` is part of the scheduler's state, so a resumed run keeps it. Step ``t`` of ``T`` with ``W``
    warm-up steps has ``lr = base * (t + 1) / W`` for ``t < W``, then
    ``eta_min + (base - eta_min) * (1 + cos(pi * (t - W) / (T - W))) / 2``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, eta_min: float = 0.0, warmup: float = 0.0,
                 last_epoch: int = -1) -> None:
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"PhaseCosineLR warmup={warmup}: expected a fraction of the phase in [0, 1)")
        self.warmup, self.sized = warmup, False
        super().__init__(optimizer, T_max=1, eta_min=eta_min, last_epoch=last_epoch)

    def _warmup_steps(self) -> int:
        return math.ceil(self.warmup * self.T_max) if self.sized else 0

    def get_lr(self) -> list[float]:
        t, warm = self.last_epoch, self._warmup_steps()
        if t < warm:
            return [base * (t + 1) / warm for base in self.base_lrs]
        phase = min(t - warm, self.T_max - warm) / max(self.T_max - warm, 1)
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * phase)) / 2
                for base in self.base_lrs]

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
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rates in effect: those of the last step, or those :meth:`fit_to` set before the first."""
        return [group["lr"] for group in self.optimizer.param_groups]


def fit_schedule(trainer: Any, module: Any, key: str, epochs: int) -> None:
    """Size ``module``'s :class:`PhaseCosineLR` (the one of config key ``key``) to the ``epochs`` of its phase:
    their share of ``trainer.estimated_stepping_batches`` with ``scheduler_interval: step``, else ``epochs``.
    A plain ``CosineAnnealingLR`` whose ``T_max`` does not span the phase is named in a warning (it would stop
    short of its end, or rise again past ``T_max``)."""
    scheduler = module.lr_schedulers()
    if not isinstance(scheduler, CosineAnnealingLR):
        return
    span = f"{epochs} epoch{'s' * (epochs != 1)}"
    steps: float = epochs
    if module.scheduler_interval == "step":  # one scheduler step per batch
        steps = trainer.estimated_stepping_batches if trainer.max_steps == -1 else math.inf
        if 0 < steps < math.inf:
            batches = int(steps) // trainer.max_epochs
            steps, span = batches * epochs, f"{span} x {batches} batches"
    if isinstance(scheduler, PhaseCosineLR):
        if scheduler.sized:  # restored from a checkpoint of this phase
            return
        if trainer.max_steps != -1 or not (0 < steps < math.inf):
            raise ValueError(f"model.init_args.{key}: PhaseCosineLR decays over its phase's epochs, but the phase "
                             f"has {span} (trainer.max_steps={trainer.max_steps}); set trainer.max_epochs and give "
                             "the training data a length, or use CosineAnnealingLR")
        scheduler.fit_to(int(steps))
        rank_zero_info(f"model.init_args.{key}: cosine decay over {int(steps)} scheduler steps ({span})")
    elif trainer.max_steps == -1 and 0 < steps < math.inf and scheduler.T_max != steps:
        rank_zero_warn(f"model.init_args.{key}: CosineAnnealingLR T_max={scheduler.T_max}, but its phase has "
                       f"{steps} scheduler steps ({span}); set T_max: {steps} so the learning rate decays "
                       "over the phase (past T_max a cosine rises again), or use "
                       "spikeloc.training.schedules.PhaseCosineLR, which sizes itself")
