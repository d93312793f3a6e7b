"""What the benchmarks share: memory meter, models and synthetic batches, and the speed options.

Every benchmark drives training the way ``tools/train.py`` does: a Lightning ``Trainer`` fits the
project's own ``OnlineModule`` subclass (manual optimization, the FPTT/BPTT time loop), so what is
measured is the real training step, not a re-implementation of it.
"""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Any, Iterator

MIB = 2 ** 20
ROOT = Path(__file__).resolve().parent.parent
# glibc: few arenas, and a fixed mmap threshold (no dynamic growth), so big freed tensors go
# straight back to the kernel and RSS follows live memory instead of allocator history.
WORKER_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
BACKENDS = ("fused", "compiled", "cpu_kernels")  # neuron backends; the default is the eager reference
OPTIONS = ("default", *BACKENDS, "compile_step", "inductor_layout", "channels_last", "bf16", "fused_adam",
           "device_guard", "eager_fptt")


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Meter:
    """Memory training adds on top of the footprint at :meth:`start` (bytes), on CPU or CUDA.

    CPU: ``VmHWM - VmRSS(baseline)`` after resetting the peak with ``5 > /proc/self/clear_refs``
    (fallback: ``getrusage`` peak since process start, which cannot be reset); CUDA:
    ``max_memory_allocated - memory_allocated(baseline)`` after ``reset_peak_memory_stats``.
    """

    def __init__(self, device: str) -> None:
        self.device, self.base, self.method = device, 0, ""

    def start(self) -> None:
        """Take the baseline and reset the peak counter."""
        import torch
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base, self.method = torch.cuda.memory_allocated(), "cuda max_memory_allocated"
            return
        try:  # hand freed heap pages back first, so the baseline is what is live
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "getrusage ru_maxrss (peak since process start: clear_refs not writable)"
        self.base = _status_kib("VmRSS") * 1024

    def peak(self) -> int:
        """Peak since :meth:`start` minus the baseline (bytes)."""
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        if self.method.startswith("VmHWM"):
            return _status_kib("VmHWM") * 1024 - self.base
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def memory_probe(meter: Meter, last_batch: int | None = None) -> Any:
    """A Lightning callback: baseline at the first batch's start, peak (``.result``) at the end of
    batch ``last_batch`` (None: at the end of training)."""
    from lightning.pytorch import Callback

    class MemoryProbe(Callback):
        def __init__(self) -> None:
            self.started, self.result = False, None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.started:
                self.started = True
                meter.start()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, index: int) -> None:
            if index == last_batch:
                self.result = meter.peak()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.started and self.result is None:
                self.result = meter.peak()

    return MemoryProbe()


# ---- models and data ---------------------------------------------------------------------
def adam(params: Any) -> Any:
    import torch
    return torch.optim.Adam(params, lr=1e-3)


def make_classifier(algorithm: str, num_steps: int, channels: list[int]) -> Any:
    """``ltc_convnet`` classifier (10 classes, RGB) trained with ``algorithm`` (FPTT: K = T)."""
    from spikeloc.training import FPTTConfig, SpikingClassifier
    return SpikingClassifier(model="ltc_convnet", num_classes=10, in_channels=3, model_kwargs={"channels": channels},
                             num_steps=num_steps, algorithm=algorithm, fptt=FPTTConfig(parts=None), optimizer=adam)


def make_detector(algorithm: str, num_steps: int, image_size: int, width: float, backbone: str = "spyv4_tiny") -> Any:
    """The SPYv4 detector (20 classes) at ``image_size`` and channel ``width``; FPTT with K = T."""
    from spikeloc.training import FPTTConfig, SpikingDetector
    return SpikingDetector(backbone=backbone, backbone_kwargs={"width": width}, num_classes=20,
                           class_names=[f"c{k}" for k in range(20)], image_size=image_size, num_steps=num_steps,
                           algorithm=algorithm, fptt=FPTTConfig(parts=None, consolidate=False), optimizer=adam)


def classification_loader(batches: int, batch_size: int, size: int) -> Any:
    """Static ``[B, 3, size, size]`` frames with random labels."""
    import torch
    from torch.utils.data import TensorDataset
    from datamodules.common import make_loader
    generator = torch.Generator().manual_seed(0)
    n = batch_size * batches
    data = TensorDataset(torch.rand(n, 3, size, size, generator=generator),
                         torch.randint(0, 10, (n,), generator=generator))
    return make_loader(data, batch_size, shuffle=False)


def detection_loader(batches: int, batch_size: int, size: int, boxes: int = 3) -> Any:
    """Random images ``[B, 3, size, size]``, each with ``boxes`` random boxes (the detection batch contract)."""
    import torch
    from datamodules.common import make_loader
    from datamodules.detection.base import collate_detection
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(batch_size * batches):
        xy = torch.rand(boxes, 2, generator=generator) * size * 0.6
        wh = (0.1 + 0.3 * torch.rand(boxes, 2, generator=generator)) * size
        target = {"boxes": torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1),
                  "labels": torch.randint(0, 20, (boxes,), generator=generator), "image_id": index + 1}
        samples.append({"image": torch.rand(3, size, size, generator=generator), "target": target})
    return make_loader(samples, batch_size, shuffle=False, collate_fn=collate_detection)


def make_trainer(device: str, batches: int, callbacks: list[Any], precision: str = "32-true") -> Any:
    """A quiet one-epoch ``Trainer`` of ``batches`` batches, no validation, no logging."""
    import lightning.pytorch as pl
    return pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                      limit_train_batches=batches, limit_val_batches=0, num_sanity_val_steps=0, precision=precision,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, default_root_dir=str(ROOT))


# ---- speed options -------------------------------------------------------------------------
def set_backend(model: Any, backend: str) -> int:
    """Run every spiking neuron of ``model`` with ``backend`` (as ``neuron_kwargs: {backend: ...}`` would);
    returns how many were switched."""
    neurons = [m for m in model.modules() if isinstance(getattr(m, "backend", None), str)]
    for neuron in neurons:
        neuron.backend = backend
    return len(neurons)


def option_parts(option: str) -> list[str]:
    """The options of ``OPTIONS`` that ``option`` joins with ``+``; a ``ValueError`` names an unknown one."""
    parts = option.split("+")
    unknown = [part for part in parts if part not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} in {option!r}; expected one of {', '.join(OPTIONS)}, "
                         "or several joined by '+'")
    return parts


def apply_option(module: Any, option: str) -> str:
    """Prepare ``module`` for ``option``, or for several joined by ``+`` (``compile_step+fused_adam``);
    returns the Trainer precision."""
    import torch
    from spikeloc.training.guard import NonFiniteGuard
    parts = option_parts(option)
    NonFiniteGuard.read_cpu_flag = "device_guard" not in parts  # the restore path a GPU takes, on any device
    for backend in BACKENDS:  # cpu_kernels: the LTC conv cells as CPU operators, the other neurons fused
        if backend in parts:
            set_backend(module, backend)
    if "compile_step" in parts:  # the whole model step through torch.compile (OnlineModule.call_step)
        module.compile_step = True
    if "inductor_layout" in parts:  # the same, with inductor free to turn convolutions channels-last
        module.compile_step = {"options": {"layout_optimization": True}}
    if "eager_fptt" in parts:  # FPTT's eager update also with cpu_kernels
        module.fptt_config.backend = "eager"
    if "fused_adam" in parts:  # Adam's update as one kernel over all parameters (CPU and CUDA)
        module.optimizer_factory = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)
    if "channels_last" in parts:  # weights, inputs and state in NHWC (the task module's option)
        module.channels_last = True
    return "bf16-mixed" if "bf16" in parts else "32-true"


def median(values: list[float]) -> float:
    import statistics
    return float(statistics.median(values))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings Lightning prints for benchmark-sized runs (few batches, no val) while the
    block runs; logger levels and warning filters are given back after (tests call the benchmarks)."""
    import logging
    import warnings
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import: override after)
    loggers = [logging.getLogger(name) for name in (
        "lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

