"""``make gpu-check`` without a GPU: it stops at once, saying why, and runs and writes nothing."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run_step", lambda *args: (_ for _ in ()).throw(AssertionError("ran a step")))
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == gpu_check.NO_GPU
    assert "gpu-check: no CUDA GPU here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_train_script_prints_the_metrics_it_reads():
    output = "run folder: runs/x\nlast checkpoint: a.ckpt\n  val/map_50: 0.4123\n  val/loss: 0.0150\n"
    assert gpu_check.metrics(output) == {"val/map_50": 0.4123, "val/loss": 0.015}
