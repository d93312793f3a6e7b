"""Hand-written CPU kernels as PyTorch operators (README "Speed and many GPUs").

The operators ``torch.ops.spikeloc.*`` are defined in :mod:`.ops` (schemas, fake tensors for
``torch.compile``, autograd): the LTC conv cell (``ltc_cell.cpp``, used by the ``cpu_kernels`` neuron
backend), FPTT's update (``fptt.cpp``, :mod:`spikeloc.training.fptt`) and a layout change for strided
convolutions' input gradients (``layout.cpp``, :mod:`.strided_conv`). Their CPU implementations
(``ops.cpp``) are built on first use with ``torch.utils.cpp_extension`` (the system C++ compiler and
ninja) into ``$SPIKELOC_CACHE`` (else ``~/.cache/spikeloc``), keyed by torch's version and the CPU
(``-march=native``), and loaded into the dispatcher, so the profiler and ``torch.compile`` see them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

from . import ops  # noqa: F401  (defines the operators)

_SOURCES = tuple(Path(__file__).parent / name for name in ("ops.cpp", "ltc_cell.cpp", "fptt.cpp", "layout.cpp"))
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
          *(["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])]


class KernelsUnavailable(RuntimeError):
    """The CPU kernels could not be built or loaded (the message names why)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("SPIKELOC_CACHE") or Path.home() / ".cache" / "spikeloc") / "kernels"


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


def _find_ninja() -> None:
    """Put the ``ninja`` of the Python package on ``PATH`` where none is there (a venv not activated)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError as error:
            raise KernelsUnavailable("ninja is not installed (pip install ninja)") from error
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


_LOADED: list[str | None] = []  # after the first load(): None, or why the kernels are unavailable


def load() -> None:
    """Build (once per cache) and load the CPU implementations; raises :class:`KernelsUnavailable`
    (again on every later call, without trying again)."""
    if not _LOADED:
        try:
            _build_and_load()
            _LOADED.append(None)
        except KernelsUnavailable as error:
            _LOADED.append(str(error))
    if _LOADED[0] is not None:
        raise KernelsUnavailable(_LOADED[0])


def _build_and_load() -> None:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
    from torch.utils import cpp_extension
    key = hashlib.sha256("\0".join([torch.__version__, _cpu_key(), *_FLAGS]).encode()).hexdigest()[:12]
    directory = _cache_dir() / f"ops-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelsUnavailable(f"no C++ compiler: {compiler!r} is not on PATH (set CXX)")
    _find_ninja()
    try:
        cpp_extension.load("spikeloc_kernels", [str(s) for s in _SOURCES], extra_cflags=_FLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(directory), is_python_module=False,
                           with_cuda=False)
    except (OSError, RuntimeError, ImportError) as error:
        message = str(error).strip().splitlines()
        raise KernelsUnavailable(f"building the CPU kernels in {directory} failed: "
                                 f"{' '.join(message[-3:])[:500]}") from error


def available() -> bool:
    """Whether the kernels are built and loaded (builds them on the first call)."""
    try:
        load()
    except KernelsUnavailable:
        return False
    return True
