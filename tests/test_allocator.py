"""glibc held to freed memory: a time loop's large tensors come back without page faults."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import resource, torch
from spikeloc.allocator import hold_freed_memory
held = hold_freed_memory()
def step():
    blocks = [torch.ones(2 << 20) for _ in range(4)]  # 4 x 8 MiB, freed together like a step's activations
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(**env):
    """In a fresh process: whether :func:`hold_freed_memory` took effect, and the page faults of 10 steps
    that each allocate and free 32 MiB."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_held_memory_is_reused_without_page_faults():
    held, count = faults()
    assert held and count < 500  # a step's 8192 pages are not faulted in again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_settings_from_the_environment_are_left_alone():
    """glibc's starting thresholds, set by hand (as the memory benchmark does), are kept: every step faults."""
    held, count = faults(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    assert not held and count > 10 * 8000
