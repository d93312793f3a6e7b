"""The task modules' base: the LightningModule owns time (docs/training.md).

``OnlineModule`` trains with manual optimization: ``training_step`` runs one batch through
:func:`~spikeloc.training.time_loop.train_batch` (the FPTT / BPTT time loop, K updates per batch under
FPTT) and logs what it returns. Subclasses say what a step is (``forward_step``), what its loss is
(``step_loss``) and how a batch presents its input over time (``inputs``). The twin phase is a callback
(:class:`~spikeloc.training.twin.TwinPhase`) the module adds for itself.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikeloc.metrics.firing import FiringStats
from spikeloc.neurons import set_twin
from spikeloc.neurons.backend import BackendError, backends, resolve
from .fptt import FPTT
from .guard import NonFiniteGuard
from .schedules import fit_schedule
from .time_loop import InputAt, Weighting, train_batch
from .twin import TwinPhase

FIRING_KEYS = ("mean_firing_rate", "synops", "macs", "ann_macs", "energy_snn_mj", "energy_ann_mj")


@dataclass
class FPTTConfig:
    """FPTT settings. ``parts`` is K (None: one update per time step, K = T)."""

    alpha: float = 0.1
    beta: float = 0.5
    parts: int | None = None
    consolidate: bool = True  # copy the running average into the weights after each epoch's last batch
    update_alpha: float | None = None  # alpha of the trace / running-average update (None: alpha)
    backend: Literal["auto", "eager", "cpu_kernels"] = "auto"  # auto: the CPU operator where the neurons use theirs


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class OnlineModule(pl.LightningModule):
    """Base LightningModule with the FPTT / BPTT time loop and manual optimization.

    Args:
        num_steps: T for static inputs (sequences bring their own T).
        algorithm: ``fptt`` (online, K truncated updates per batch) or ``bptt``.
        fptt: FPTT settings (alpha, beta, parts K, consolidate).
        loss_weighting / loss_start_step: per-step loss weights, see :func:`step_weights`.
        optimizer / scheduler: callables taking parameter groups / the optimizer.
        scheduler_interval: step the scheduler after every batch (``step``) or epoch.
        gradient_clip_val / gradient_clip_algorithm: clipping before every optimizer step.
        freeze_backbone_epochs: keep the backbone frozen for the first N epochs.
        backbone_lr: learning rate of the backbone group (None: the optimizer's).
        max_nonfinite_steps: a step with a non-finite loss, gradient or weight is skipped (see
            :mod:`spikeloc.training.guard`); this many in a row stop training (0: never stop).
        twin_fraction: train the first ``round(twin_fraction * max_epochs)`` epochs as the network's ANN
            twin (every spiking neuron ``leaky_relu``, one time step, FPTT with K = 1), then as the SNN from
            those weights: ANN->SNN initialisation in one run (docs/learning.md). A fraction, so the split
            holds whatever ``max_epochs`` is.
        twin_epochs: the twin phase as a number of epochs instead (not with ``twin_fraction``).
        twin_joint: in the spiking phase, every batch first takes one update of the network run as its twin
            (T = 1, the first input of the batch) on its loss times ``twin_joint``, then the spiking updates:
            the twin's fast learning keeps shaping the shared weights (docs/learning.md). BN's running
            statistics stay the SNN's. 0: off.
        twin_scheduler: the learning-rate schedule of the twin epochs. Given, the spiking phase then
            starts like a run of its own initialised from the twin (``init_from``): fresh optimizer
            and FPTT state, the learning rate back at its initial value and ``scheduler`` from its
            first step. None: one optimizer state and one ``scheduler`` run through both phases.
        compile_step: run the per-step model call (:meth:`call_step`) through ``torch.compile``;
            a dict is passed to ``torch.compile`` (``mode``, ``backend``, ``dynamic`` ...). The step
            keeps the model's memory format (``channels_last`` decides; see :func:`compile_options`).
            Parameter names and checkpoints are unchanged; a failing compiler warns once and runs eager.
            Evaluation runs the step the same way.
        channels_last: keep 4-D weights and inputs (and so the neuron state) in the channels-last (NHWC)
            memory format, which oneDNN and cuDNN's tensor cores prefer (README "Speed"). Same maths;
            checkpoints load either way.
    """

    def __init__(self, num_steps: int = 8, algorithm: Literal["fptt", "bptt"] = "fptt",
                 fptt: FPTTConfig | None = None, loss_weighting: Weighting = "uniform", loss_start_step: int = 0,
                 optimizer: OptimizerCallable = torch.optim.Adam, scheduler: LRSchedulerCallable | None = None,
                 scheduler_interval: Literal["step", "epoch"] = "epoch", gradient_clip_val: float | None = 1.0,
                 gradient_clip_algorithm: Literal["norm", "value"] = "norm", freeze_backbone_epochs: int = 0,
                 backbone_lr: float | None = None, max_nonfinite_steps: int = 10, twin_fraction: float = 0.0,
                 twin_epochs: int = 0, twin_joint: float = 0.0,
                 twin_scheduler: LRSchedulerCallable | None = None,
                 compile_step: bool | dict[str, Any] = False, channels_last: bool = False) -> None:
        super().__init__()
        if algorithm not in ("fptt", "bptt"):
            raise ValueError(f"algorithm must be 'fptt' or 'bptt', got {algorithm!r}")
        self.automatic_optimization = False
        self.num_steps, self.algorithm = num_steps, algorithm
        self.fptt_config = FPTTConfig(**fptt) if isinstance(fptt, dict) else fptt or FPTTConfig()
        # Every init argument of the task module (subclass frames included) goes into the checkpoint, so
        # ``load_from_checkpoint`` needs no config. The optimizer/scheduler callables are left to the
        # training config; FPTT is stored as plain values (checkpoints load with ``weights_only=True``).
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "twin_scheduler"])
        self.hparams["fptt"] = asdict(self.fptt_config)
        for key in set(self.hparams) - _init_parameters(type(self)):  # CLI links this class does not take
            if not key.startswith("_"):
                del self.hparams[key]
        self.loss_weighting, self.loss_start_step = loss_weighting, loss_start_step
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.freeze_backbone_epochs, self.backbone_lr = freeze_backbone_epochs, backbone_lr
        self.fptt: FPTT | None = None
        self.max_nonfinite_steps = max_nonfinite_steps
        self.guard: NonFiniteGuard | None = None
        self._pending_fptt_state: dict | None = None
        self.firing_stats: FiringStats | None = None  # of the evaluation epoch under way
        self.firing_meters: list[FiringStats] = []  # every FiringStats that call_step feeds (evaluation, monitors)
        if twin_epochs < 0:
            raise ValueError(f"twin_epochs must be >= 0, got {twin_epochs}")
        if not 0 <= twin_fraction < 1 or (twin_fraction and twin_epochs):
            raise ValueError(f"twin_fraction must be in [0, 1) and not given with twin_epochs; got twin_fraction="
                             f"{twin_fraction}, twin_epochs={twin_epochs}")
        self.twin_fraction, self.twin_epochs, self.twin_active = twin_fraction, twin_epochs, False
        self.twin_joint = twin_joint
        self.twin_scheduler_factory = twin_scheduler
        self.spiking_phase_started = False  # the spiking phase has begun with its own optimizer state and schedule
        self.compile_step = compile_step
        self._compiled_call: Callable[..., Any] | None = None  # built at the first call (not a submodule)
        self.channels_last = channels_last

    def configure_callbacks(self) -> list[pl.Callback]:
        """The twin phase, where ``twin_fraction`` or ``twin_epochs`` asks for one."""
        return [TwinPhase(self.twin_fraction, self.twin_epochs)] if self.twin_fraction or self.twin_epochs else []

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        """Optimizer state in its parameter's memory layout: a checkpoint of a run without
        ``channels_last`` brings contiguous state, which ``Adam(fused=True)`` would misread (torch 2.14)."""
        for optimizer in self.trainer.optimizers:
            for param, state in optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                        state[key] = torch.empty_like(param).copy_(value)

    def laid_out_inputs(self, batch: Any) -> tuple[InputAt, int]:
        """:meth:`inputs`, each 4-D step input channels-last when ``channels_last``."""
        input_at, num_steps = self.inputs(batch)
        if not self.channels_last:
            return input_at, num_steps
        return (lambda t: _channels_last(input_at(t))), num_steps

    # ---- what subclasses provide -------------------------------------------------------
    def inputs(self, batch: Any) -> tuple[Callable[[int], Tensor], int]:
        """``(input_at, T)`` for a batch."""
        raise NotImplementedError

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[Any, Any]:
        """One model time step: ``(output_t, state)``."""
        raise NotImplementedError

    def step_loss(self, output: Any, batch: Any) -> dict[str, Tensor]:
        """Loss of one step's output against the batch's targets: ``{"loss": scalar, **named parts}``;
        the parts (``box``, ``obj`` ...) are logged as ``train/<name>``, averaged over the weighted steps."""
        raise NotImplementedError

    def spiking_network(self) -> nn.Module | None:
        """The module called once per step whose firing rates and SynOps evaluation reports."""
        return None

    def firing_network(self) -> nn.Module | None:
        """What firing is measured on now: :meth:`spiking_network`, or nothing in the ANN twin phase."""
        return None if self.twin_active else self.spiking_network()

    def backbone_parameters(self) -> list[nn.Parameter]:
        """What ``freeze_backbone_epochs`` / ``backbone_lr`` act on (empty: no such part)."""
        return []

    def call_step(self, module: nn.Module, *args: Any) -> Any:
        """``module(x_t, state)``: one time step, compiled when ``compile_step`` (README "Speed"); the
        :attr:`firing_meters` of ``module`` count its input and the state it returns.

        The compiled function calls the module itself, so nothing is re-registered and the state dict
        keeps its keys. Graphs: one per kind of state (None at the first step, then the nested
        state) and grad mode; a batch of a new size compiles them once more with a dynamic batch.
        If compiling fails, one warning names the error and every later call runs eager.
        """
        output = self._run_step(module, *args)
        for meter in self.firing_meters:
            if meter.watches(module):
                meter.update(args[0], args[1] if len(args) > 1 else None, output[1])
        return output

    def _run_step(self, module: nn.Module, *args: Any) -> Any:
        if not self.compile_step:
            return module(*args)
        try:
            if self._compiled_call is None:
                self._compiled_call = torch.compile(_call_module, **compile_options(self.compile_step))
            return self._compiled_call(module, *args)
        except BackendError:  # a neuron backend that cannot run here: not a compiler failure
            raise
        except Exception as error:  # compiler or backend failure: eager from now on
            _warn_compile_failed(error)
            self.compile_step, self._compiled_call = False, None
            return module(*args)

    # ---- optimisation ------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        backbone = self.backbone_parameters()
        if not backbone or self.backbone_lr is None:
            groups: Any = [{"params": list(self.parameters())}]
        else:
            inner = {id(p) for p in backbone}
            groups = [{"params": backbone, "lr": self.backbone_lr},
                      {"params": [p for p in self.parameters() if id(p) not in inner]}]
        optimizer = self.optimizer_factory(groups)
        twin_own = self.twin_scheduler_factory is not None and bool(self.twin_fraction or self.twin_epochs) and \
            not self.spiking_phase_started  # the twin phase's own schedule (twin_scheduler)
        scheduler = self.twin_scheduler_factory if twin_own else self.scheduler_factory
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler(optimizer)}

    def start_spiking_phase(self) -> None:
        """Begin the spiking phase as a run of its own from the twin's weights (``twin_scheduler``; called
        by :class:`~spikeloc.training.twin.TwinPhase`)."""
        optimizer = self.trainer.optimizers[0]
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])  # the twin's schedule moved it
        configs = self.trainer.lr_scheduler_configs
        if self.scheduler_factory is None:
            configs.clear()
        else:
            configs[0].scheduler = self.scheduler_factory(optimizer)
        if self.fptt is not None:
            self.fptt = self._new_fptt()
        self.guard = None  # it watches the old FPTT buffers: rebuilt at the next step
        self.spiking_phase_started = True

    def on_fit_start(self) -> None:
        self.guard = None
        self._log_backends()
        if self.algorithm == "fptt":
            self.fptt = self._new_fptt()
            if self._pending_fptt_state is not None:
                self.fptt.load_state_dict(self._pending_fptt_state)
                self._pending_fptt_state = None

    def _new_fptt(self) -> FPTT:
        """FPTT state that starts at the current weights."""
        config = self.fptt_config
        return FPTT(self.parameters(), config.alpha, config.beta, config.update_alpha, backend=self._fptt_backend())

    def _fptt_backend(self) -> str:
        """``fptt.backend``; ``auto``: ``cpu_kernels`` where a neuron asks for the CPU kernels (``cpu_kernels`` or
        ``auto``) and the parameters are float32 on the CPU with the kernels built, else ``eager``."""
        if self.fptt_config.backend != "auto":
            return self.fptt_config.backend
        asked = backends(self)
        if not (asked.get("cpu_kernels") or asked.get("auto")):
            return "eager"
        from spikeloc import kernels
        params = [p for p in self.parameters() if p.requires_grad]
        float_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        return "cpu_kernels" if float_cpu and kernels.available() else "eager"

    def _log_backends(self) -> None:
        """Log once what the neurons run (``auto`` resolved for this device, dtype and precision, for neurons
        with CPU kernels); a backend that cannot run here raises now."""
        asked = backends(self)
        if not asked:
            return
        like = torch.empty((1, 2, 2, 2), device=self.device, dtype=next(self.parameters()).dtype,
                           memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        with self.trainer.precision_plugin.forward_context():  # autocast under mixed precision
            resolved = {name: resolve(name, like, True) for name in asked}
        rank_zero_info("neuron backends: " + ", ".join(
            f"{count} x {name}" + (f" -> {resolved[name]}" if resolved[name] != name else "")
            for name, count in asked.items()))

    @property
    def time_steps(self) -> int:
        """T of a static input now: 1 while training as the ANN twin, else ``num_steps``."""
        return 1 if self.twin_active else self.num_steps

    def set_twin_phase(self, on: bool) -> None:
        """Run every spiking neuron as its ANN twin (``on``) or spiking (:class:`~spikeloc.training.twin.TwinPhase`)."""
        if on != self.twin_active:
            count = set_twin(self, on)
            self.twin_active = on
            rank_zero_info(f"epoch {self.current_epoch}: {count} neurons now run "
                           f"{'as their ANN twin (T = 1)' if on else 'spiking'}")

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 0 and not (self.twin_fraction or self.twin_epochs):  # else TwinPhase sizes it
            fit_schedule(self.trainer, self, "scheduler", self.trainer.max_epochs)
        if self.freeze_backbone_epochs > 0:
            trainable = self.current_epoch >= self.freeze_backbone_epochs
            for parameter in self.backbone_parameters():
                parameter.requires_grad_(trainable)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Inside the step, after AMP unscaled the gradients: clipping sees true gradients under 16-mixed too.
        norm = clip_gradients(self, optimizer) if self.gradient_clip_val else None
        if self.guard is not None:
            self.guard.precheck(norm)  # on the CPU: a bad update is skipped

    # ---- the time loop -----------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        result = train_batch(self, batch, optimizer)
        self.guard.check()  # one host sync per batch
        if self.fptt is not None and self.fptt_config.consolidate and self.trainer.is_last_batch:
            self.fptt.consolidate()  # here, so every checkpoint and validation sees the running average
        if self.scheduler_interval == "step":
            self._step_scheduler()
        size, loss = result.batch_size, result.loss / result.spans
        self.log("train/nonfinite_steps", self.guard.bad_total.float(), on_step=True, on_epoch=False)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        if self.fptt is not None:
            self.log("train/fptt_penalty", result.penalty / result.spans, on_step=True, on_epoch=False)
        if result.twin_loss is not None:
            self.log("train/twin_loss", result.twin_loss, on_step=True, on_epoch=False)
        for name, value in result.parts.items():
            self.log(f"train/{name}", value / result.weighted_steps, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def updates_per_batch(self, num_steps: int) -> int:
        """K: ``fptt.parts`` (default T) under FPTT, 1 under BPTT and in the twin phase."""
        return self.fptt_config.parts or num_steps if self.algorithm == "fptt" and not self.twin_active else 1

    def guard_for(self, optimizer: Any) -> NonFiniteGuard:
        """The non-finite guard of ``optimizer`` (built on first use, rebuilt if the optimizer changes)."""
        inner = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer
        if self.guard is None or self.guard.optimizer is not inner:
            in_place = self.fptt.in_place_state() if self.fptt is not None else []
            covers = self.fptt.params if self.fptt is not None and not in_place else []  # see FPTT.stage
            # a bad update is skipped rather than undone where nothing scales the loss and the optimizer
            # steps no parameter without a gradient (guard module doc)
            skip = _unscaled(self.trainer.precision_plugin) and f"{type(inner).__module__}.".startswith("torch.optim.")
            self.guard = NonFiniteGuard(list(self.parameters()), inner, list(self.buffers()) + in_place,
                                        self.max_nonfinite_steps, staged_covers=covers, skip_bad_updates=skip)
        return self.guard

    def run_sequence(self, batch: Any) -> list[Any]:
        """Outputs of every time step, without gradients (evaluation)."""
        input_at, num_steps = self.laid_out_inputs(batch)
        outputs, state = [], None
        with torch.no_grad():
            for t in range(num_steps):
                output, state = self.forward_step(input_at(t), state)
                outputs.append(output)
        return outputs

    # ---- evaluation epochs: subclasses extend these two, the hooks below call them ---------
    def start_evaluation(self) -> None:
        """Count firing statistics of :meth:`spiking_network` for one evaluation epoch (see :meth:`call_step`)."""
        network = self.firing_network()
        self.firing_stats = FiringStats(network) if network is not None else None
        if self.firing_stats is not None:
            self.firing_meters.append(self.firing_stats)

    def end_evaluation(self, stage: str) -> None:
        """Firing statistics per sample (one host sync) logged as ``<stage>/<key>`` and
        ``<stage>/firing_rate/<layer>``."""
        if self.firing_stats is None:
            return
        firing = self.firing_stats.compute(time_steps=None)
        self.firing_meters.remove(self.firing_stats)
        self.firing_stats = None
        for key in FIRING_KEYS:
            self.log(f"{stage}/{key}", float(firing[key]), sync_dist=True)
        for layer, rate in firing["firing_rate"].items():
            self.log(f"{stage}/firing_rate/{layer}", rate, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.start_evaluation()

    def on_validation_epoch_end(self) -> None:
        self.end_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self.start_evaluation()

    def on_test_epoch_end(self) -> None:
        self.end_evaluation("test")

    def on_train_epoch_end(self) -> None:
        if self.scheduler_interval == "epoch":
            self._step_scheduler()

    def _step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    # ---- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.fptt is not None:
            checkpoint["fptt"] = self.fptt.state_dict()
        checkpoint["fptt_config"] = asdict(self.fptt_config)
        checkpoint["spiking_phase_started"] = self.spiking_phase_started
        data = getattr(self.trainer, "datamodule", None)  # called by trainer.save_checkpoint
        checkpoint["class_paths"] = {"model": _class_path(self), "data": _class_path(data) if data else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before the model reaches its device: keep it until on_fit_start builds FPTT.
        self._pending_fptt_state = checkpoint.get("fptt")
        # Before configure_optimizers on resume: it picks the schedule the checkpoint's state belongs to.
        self.spiking_phase_started = checkpoint.get("spiking_phase_started", False)


def clip_gradients(module: pl.LightningModule, optimizer: Any) -> Tensor | None:
    """Clip by ``module.gradient_clip_val`` (norm or value); returns the gradients' total norm where it
    takes one (clipping by norm without a gradient scaler), else None. Under a scaler (16-mixed) this is
    Lightning's ``clip_gradients``; without one its precision plugin's, which also clips a fused optimizer
    under bf16-mixed (nothing is scaled there: Lightning refuses it only as a precaution). By norm, the
    factor ``min(1, max_norm / (norm + 1e-6))`` is applied as ``torch.nn.utils.clip_grad_norm_`` applies it,
    except that a fused ``torch.optim`` optimizer's gradients are divided by its inverse, as its fused step
    divides by a scale (the numbers of handing that step the factor)."""
    precision, value, algorithm = module.trainer.precision_plugin, module.gradient_clip_val, \
        module.gradient_clip_algorithm
    if not _unscaled(precision):
        module.clip_gradients(optimizer, value, algorithm)
        return None
    if algorithm != "norm":
        Precision.clip_gradients(precision, optimizer, value, algorithm)
        return None
    params = list(precision.main_params(optimizer))
    inner = getattr(optimizer, "optimizer", optimizer)
    if not all(group.get("fused") for group in inner.param_groups):
        return torch.nn.utils.clip_grad_norm_(params, value)
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    torch._foreach_div_(grads, ((norm + 1e-6) / value).clamp_(min=1.0))
    return norm


def _unscaled(precision: Any) -> bool:
    """Lightning's plain or mixed precision without a gradient scaler (32-true, bf16-mixed ...)."""
    return type(precision) in (Precision, MixedPrecision) and getattr(precision, "scaler", None) is None


def _warn_compile_failed(error: Exception) -> None:
    """One warning that ``torch.compile`` failed for ``compile_step``, naming the error's first line (inductor's
    can run to pages)."""
    message = (str(error).strip().splitlines() or [""])[0][:300]
    warnings.warn(f"compile_step: torch.compile failed ({type(error).__name__}: {message}); running the model step "
                  "eager", RuntimeWarning, stacklevel=3)


def compile_options(compile_step: bool | dict[str, Any]) -> dict[str, Any]:
    """``torch.compile``'s arguments for ``compile_step``: the dict given, with inductor's
    ``layout_optimization`` off unless set, so the compiled step keeps the model's memory format. Left
    on, inductor turns the convolutions and everything around them channels-last, which made the
    full-size detector's step slower on the CPUs measured (docs/speed.md); ``channels_last: true`` is
    the switch for that layout. With ``mode``, which ``torch.compile`` takes only without ``options``,
    or another backend, the dict is passed as given."""
    options = dict(compile_step) if isinstance(compile_step, dict) else {}
    if options.get("backend", "inductor") == "inductor" and "mode" not in options:
        options["options"] = {"layout_optimization": False, **options.get("options", {})}
    return options


def _call_module(module: nn.Module, *args: Any) -> Any:
    """What :meth:`OnlineModule.call_step` compiles: the module's own ``__call__`` -> ``(output, state)``."""
    return module(*args)


def _class_path(obj: Any) -> str:
    """``package.module.Class`` of an object (what rebuilds it from a checkpoint's hyperparameters)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _init_parameters(cls: type) -> set[str]:
    """Names of the ``__init__`` parameters of ``cls`` and its bases."""
    return {name for base in cls.__mro__ if "__init__" in vars(base)
            for name in inspect.signature(vars(base)["__init__"]).parameters}
