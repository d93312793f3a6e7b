"""Hand-written CPU kernels (README "Speed and many GPUs"): the LTC cell (``ltc_cell.c``, used by
:mod:`spikeloc.neurons.native`), FPTT's update (``fptt.c``, used by :mod:`spikeloc.training.fptt`),
2x2 max pooling (``maxpool.c``, :mod:`spikeloc.kernels.maxpool`) and a layout change for strided
convolutions' input gradients (``layout.c``, :mod:`spikeloc.kernels.strided_conv`).

The ``.c`` files of this folder are compiled on first use, as one shared library, with the system C
compiler (``$CC``, else ``cc``) into ``$SPIKELOC_CACHE`` (else ``~/.cache/spikeloc``), keyed by the
sources, the flags and the CPU, and loaded with ctypes. Without a compiler one warning names the error,
:func:`library` is None, and their callers run their torch code instead.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

_SOURCES = tuple(sorted(Path(__file__).parent.glob("*.c")))
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC",
          *(("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()))
F, I64, INT, P = ctypes.c_float, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


class Surrogate(ctypes.Structure):
    """The multi-Gaussian surrogate's constants, as ``ltc_cell.c``'s ``surrogate_t``."""
    _fields_ = [(name, ctypes.c_float) for name in ("c0", "c1", "k0", "k1", "sigma")]


SIGNATURES = {  # argument types of each kernel, in the C sources' order
    "ltc_input_forward": [P] * 4 + [I64] * 3 + [INT, F] + [P] * 4 + [INT],
    "ltc_tau_forward": [P] * 9 + [I64] * 3 + [INT, F, F, INT] + [P] * 5 + [INT],
    "ltc_tau_backward": [P] * 13 + [I64] * 3 + [INT, F, INT, INT, Surrogate] + [P] * 4 + [INT],
    "ltc_input_backward": [P] * 11 + [I64] * 3 + [INT] + [P] * 4 + [INT],
    "fptt_stage": [P, P, I64, P, P, F, F, F, P, P, P, P, INT],
    "maxpool2_forward": [P] + [I64] * 6 + [P, P, INT],
    "maxpool2_backward": [P, P] + [I64] * 6 + [P, INT],
    "nhwc_to_nchw": [P, P, I64, I64, I64, INT],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("SPIKELOC_CACHE") or Path.home() / ".cache" / "spikeloc") / "kernels"


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


def _build() -> Path:
    """Compile the sources into the cache (atomically: a temporary file renamed) unless they are there."""
    compiler = os.environ.get("CC", "cc")
    parts = [source.read_text() for source in _SOURCES] + [compiler, *_FLAGS, _cpu_key()]
    path = _cache_dir() / f"spikeloc-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            result = subprocess.run([compiler, *_FLAGS, *map(str, _SOURCES), "-o", tmp, "-lm"], capture_output=True,
                                    text=True)
            if result.returncode:
                raise RuntimeError(f"{compiler} failed on {', '.join(s.name for s in _SOURCES)}: "
                                   f"{result.stderr.strip()[:500]}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (after one warning) where they cannot be built or loaded."""
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"the native CPU kernels are unavailable ({error}); the usual torch code runs instead",
                      stacklevel=3)
        return None
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, None
    return lib


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernels are built and loaded (a constant to ``torch.compile``)."""
    return library() is not None


def scope(name: str) -> contextlib.AbstractContextManager:
    """A profiler range named ``name`` while a profiler runs, else nothing (a range costs microseconds
    per call, as much as a small kernel)."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()
