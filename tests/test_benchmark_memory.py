"""The memory benchmark end to end, tiny: FPTT flat in T, BPTT growing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "memory.py"


def run_benchmark(*extra: str) -> dict:
    """Run the benchmark CLI in a subprocess and parse its last stdout line."""
    command = [sys.executable, str(SCRIPT), "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_memory_benchmark_json_fptt_flat_bptt_grows(tmp_path):
    # 64x64 frames, batch 4: one step's activations (~1 MiB) stand well above the allocator noise,
    # so BPTT over 8 steps clearly outgrows BPTT over 2 while FPTT stays flat.
    plot = tmp_path / "memory.png"
    table = run_benchmark("--steps", "2", "8", "--image-size", "64", "--batch-size", "4", "--batches", "2",
                          "--plot", str(plot))
    assert set(table) == {"fptt", "bptt"}
    for algorithm in ("fptt", "bptt"):
        assert set(table[algorithm]) == {"2", "8"}
        assert all(isinstance(v, int) and v > 0 for v in table[algorithm].values())
    assert table["bptt"]["8"] > table["bptt"]["2"]
    assert table["fptt"]["8"] < 1.5 * table["fptt"]["2"]
    assert table["bptt"]["8"] > table["fptt"]["8"]
    assert plot.stat().st_size > 0
