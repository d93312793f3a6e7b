"""glibc's allocator set for training: freed tensors stay in the process for the next time step.

By default glibc serves large blocks with fresh ``mmap`` pages (above a threshold that starts at
128 KiB) and gives the top of its heap back to the kernel once enough of it is free. A time loop
frees and allocates the same large activations at every step, so each step faults all their pages in
again: tens of thousands of page faults per batch of the paper's 416x416 workload, where
:func:`hold_freed_memory` leaves a handful (benchmarks/RESULTS.md, "The glibc allocator"). The price:
memory freed after the peak is not returned to the kernel until the process ends.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: blocks below it come from the heap


def hold_freed_memory() -> bool:
    """Keep freed blocks below 32 MiB in the heap and never trim it (glibc ``mallopt``).

    Does nothing where the allocator is not glibc's, or where the environment already sets it
    (``MALLOC_*_`` or ``GLIBC_TUNABLES``, e.g. the memory benchmark's exact-peak settings).
    Returns whether the settings took effect."""
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ or \
            any(key.startswith("MALLOC_") and key.endswith("_") for key in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
