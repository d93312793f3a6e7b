"""Callbacks that keep a run's work safe (docs/troubleshooting.md).

- :class:`SafeCheckpoint`: Lightning's ``ModelCheckpoint`` that never writes non-finite weights
  (and so never replaces or deletes a good checkpoint for one), writes ``last`` before each
  validation (an error there keeps the training epoch) and every N optimizer steps (K per batch under
  FPTT).
- :class:`ConfiguredOptimization`: a resumed run takes the optimizer and schedule settings of its config.
- :class:`SignalCheckpoint`: SIGTERM (what clusters send before pre-emption) and SIGINT (Ctrl-C)
  finish the current batch, save a resumable ``last`` checkpoint and exit non-zero (143 / 130),
  printing how to resume; the RNG states travel in every checkpoint so a resumed run draws the
  same random numbers as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import random
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .schedules import PhaseCosineLR


def weights_finite(module: pl.LightningModule) -> bool:
    """Whether every parameter, buffer and FPTT tensor of ``module`` is finite (one host sync)."""
    tensors = [*module.parameters(), *module.buffers()]
    fptt = getattr(module, "fptt", None)
    if fptt is not None:
        tensors += fptt.running + fptt.trace
    tensors = [t.detach().float() for t in tensors if t.numel()]
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


class SafeCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that never trades a good checkpoint for a worse one; only its public hooks are used.

    Same arguments as Lightning's. Differences: nothing is written while any weight is non-finite (a
    warning names the checkpoint kept instead); with ``save_last`` the ``last`` checkpoint is also written
    when the training batches of an epoch are done, before validation runs, and when training ends;
    nothing is written for a state already saved (a resumed run that has nothing left to train leaves its
    files alone). ``every_n_train_steps`` writes ``last`` (the resumable state; it needs ``save_last``) at
    the end of each batch in which the optimizer step count reaches a multiple of it (K steps per batch
    under FPTT, in manual and automatic optimization alike); the top-k files keep their epoch / validation
    schedule (``every_n_epochs``).
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        if kwargs.get("train_time_interval") is not None:
            raise ValueError("checkpoint.train_time_interval is not supported: use checkpoint.every_n_train_steps")
        super().__init__(*args, **kwargs)
        if every_n_train_steps and not self.save_last:
            raise ValueError("checkpoint.every_n_train_steps writes last.ckpt: it needs checkpoint.save_last: true")
        self.every_n_train_steps = every_n_train_steps or 0
        self.versioned = kwargs.get("enable_version_counter", True)  # another run's `last` is not overwritten
        self._finite_at: tuple[int, bool] | None = None
        self._steps_seen = 0
        self._written_at = -1  # global step of the newest checkpoint written (or resumed from) by this trainer

    def _finite(self, trainer: pl.Trainer) -> bool:
        if self._finite_at is None or self._finite_at[0] != trainer.global_step:
            self._finite_at = (trainer.global_step, weights_finite(trainer.lightning_module))
            if not self._finite_at[1]:
                kept = self.last_model_path or self.best_model_path or "none written yet"
                rank_zero_warn(f"step {trainer.global_step}: weights are not finite, no checkpoint written; "
                               f"the last good one is kept ({kept}).")
        return self._finite_at[1]

    def _write_last(self, trainer: pl.Trainer) -> None:
        """Write ``last`` now, unless saving is off (sanity check, fast_dev_run, not fitting), this step is
        written already or a weight is not finite."""
        off = trainer.sanity_checking or bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING
        if not self.save_last or off or self._written_at == trainer.global_step or not self._finite(trainer):
            return
        metrics = {"epoch": torch.tensor(trainer.current_epoch), "step": torch.tensor(trainer.global_step)}
        path, version = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST), self.STARTING_VERSION
        while self.versioned and path != self.last_model_path and self.file_exists(path, trainer):
            path, version = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version), version + 1
        self.last_model_path = path  # before saving: it is part of the saved state
        trainer.save_checkpoint(path, self.save_weights_only)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._written_at = trainer.global_step  # any checkpoint of this trainer, whoever asked for it

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._steps_seen = trainer.global_step
        if trainer.ckpt_path:  # the restored state is saved already: resuming a finished run writes nothing
            self._written_at = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        previous, self._steps_seen = self._steps_seen, trainer.global_step
        every = self.every_n_train_steps
        if every and trainer.global_step // every != previous // every:
            self._write_last(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``last`` holds the end of training, also when the last epochs ran no validation (where
        ``check_val_every_n_epoch`` > 1 Lightning saves only after a validation)."""
        self._write_last(trainer)

    # Lightning's own saves (top-k, and ``last`` after them), each only while the weights are finite
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._finite(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._finite(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if getattr(self, "save_on_exception", False) and self._finite(trainer):  # Lightning >= 2.6
            super().on_exception(trainer, pl_module, exception)


PROGRESS_KEYS = {"base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr",
                 "verbose", "sized"}  # a scheduler's state that is progress, not a setting (``sized``: PhaseCosineLR's)


def _settings(optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple:
    """What a config says about optimization: the optimizer's class and hyperparameters (the initial learning
    rates), the scheduler's class and settings; not their progress or state."""
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
              | {"lr": g.get("initial_lr", g["lr"])} for g in optimizer.param_groups]
    if scheduler is None:
        return type(optimizer), groups, None
    state = {k: v for k, v in scheduler.state_dict().items() if k not in PROGRESS_KEYS}
    if isinstance(scheduler, PhaseCosineLR):
        state.pop("T_max")  # sized to the phase, not set by the config
    return type(optimizer), groups, (type(scheduler), state)


class ConfiguredOptimization(pl.Callback):
    """On resume, the config's optimizer and schedule settings win over the checkpoint's (docs/troubleshooting.md:
    after a divergence, lower the learning rate or fix the scheduler and resume from ``last.ckpt``).

    Lightning restores the optimizer's hyperparameters and the scheduler with its settings from the checkpoint,
    so a fixed config changed nothing: a learning rate of 2e27 came back. When the settings of the resumed run's
    config differ from the checkpoint's, the optimizer keeps its state (moments) and takes the config's
    hyperparameters, and the config's schedule replaces the old one, advanced to the restored number of
    scheduler steps (replayed from the config's initial learning rate). Unchanged settings change nothing,
    so an ordinary resume stays exact.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.ckpt_path or len(trainer.optimizers) != 1:
            return
        restored = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        previous = configs[0].scheduler if configs else None
        fresh = pl_module.configure_optimizers()
        optimizer, scheduler = (fresh["optimizer"], fresh.get("lr_scheduler")) if isinstance(fresh, dict) \
            else (fresh, None)
        if _settings(optimizer, scheduler) == _settings(restored, previous):
            return
        if type(optimizer) is not type(restored):
            raise ValueError(f"the resumed run's optimizer is {type(optimizer).__name__}, the checkpoint's "
                             f"{type(restored).__name__}: its state cannot carry over; resume with the same class")
        for old, new in zip(restored.param_groups, optimizer.param_groups):
            old.update({key: value for key, value in new.items() if key != "params"})
        if scheduler is None:
            configs.clear()
        else:
            self._advance(scheduler, restored, previous)
            configs[0].scheduler = scheduler
        rank_zero_info(f"resumed with the config's optimizer and schedule settings: learning rate now "
                       f"{restored.param_groups[0]['lr']:.3g}")

    @staticmethod
    def _advance(scheduler: Any, optimizer: torch.optim.Optimizer, previous: Any) -> None:
        """Move ``scheduler`` (built on a fresh optimizer) onto ``optimizer`` and replay the steps ``previous`` took."""
        scheduler.optimizer = optimizer
        if isinstance(scheduler, PhaseCosineLR) and getattr(previous, "sized", False):
            scheduler.fit_to(previous.T_max)
        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": a replay steps no optimizer
            warnings.simplefilter("ignore")
            for _ in range(previous.last_epoch if previous is not None else 0):
                scheduler.step()


def _rng_states() -> dict[str, Any]:
    """Every global RNG (python, numpy, torch CPU and CUDA) in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def rng_states_kept() -> Iterator[None]:
    """Run the block and put every global RNG back as it was (the block moves no random stream)."""
    states = _rng_states()
    try:
        yield
    finally:
        _set_rng_states(states)


class SignalCheckpoint(pl.Callback):
    """SIGTERM / SIGINT: finish the batch, save ``last``, exit non-zero with how to resume.

    Lightning turns SIGTERM into ``SIGTERMException`` at the end of the current batch (all DDP
    ranks together); SIGINT is routed the same way (a second Ctrl-C stops at once). The checkpoint
    goes where the run's :class:`SafeCheckpoint` keeps ``last``; the exit status is 128 + signal.
    (Lightning's ``OnExceptionCheckpoint`` does not serve here: it takes its folder when built, before the
    run's ``version_N`` is known, writes for any exception, non-finite weights included, and deletes its
    file when a run ends normally.)

    Args:
        resume_hint: the command line that resumes the run, printed in the message.
    """

    def __init__(self, resume_hint: str = "python tools/train.py --config <your config> --ckpt_path last") -> None:
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self._pending_rng: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_rng is not None:  # restored here: nothing draws random numbers before the next batch
            _set_rng_states(self._pending_rng)
            self._pending_rng = None
        self.signum = None
        try:  # Lightning restores the previous handlers at teardown
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            pass

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        print("\nCtrl-C: saving a checkpoint after this batch (press again to stop at once) ...", file=sys.stderr)
        self.signum = signum
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if callable(on_sigterm):
            on_sigterm(signum, frame)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        exception.code = 128 + signum
        checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        if trainer.global_step == 0 or checkpoint is None or checkpoint.dirpath is None:
            rank_zero_info(f"\n{name}: stopped before any update could be saved; nothing to resume.")
            return
        path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        if not weights_finite(pl_module):
            rank_zero_info(f"\n{name}: weights are not finite, no checkpoint written; resume from the last one.")
            return
        checkpoint.last_model_path = str(path)  # before saving: it is part of the saved state
        trainer.save_checkpoint(path)
        rank_zero_info(f"\n{name}: stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; saved "
                       f"{path}.\nResume with: {self.resume_hint}")
