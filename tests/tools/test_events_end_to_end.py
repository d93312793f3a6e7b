"""The events quick start end to end through ``tools/``, as its header documents (in a fresh working folder,
smaller): train with the logger it ships with, evaluate the run's ``last.ckpt``, stream a recording."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.event_formats import random_events, write_dat

REPO = Path(__file__).resolve().parents[2]
CKPT = "runs/quickstart_events/version_0/checkpoints/last.ckpt"  # where the header's eval command looks


@pytest.mark.slow
def test_quickstart_events_trains_and_evaluates_through_the_tools(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    small = ["--config", str(REPO / "configs" / "quickstart_events.yaml"), "--data.init_args.num_train", "8",
             "--data.init_args.num_val", "4", "--data.init_args.batch_size", "4",
             "--model.init_args.backbone_kwargs", '{"width": 0.125}', "--trainer.enable_progress_bar", "false"]

    def tool(script, *args):
        done = subprocess.run([sys.executable, str(REPO / "tools" / script), *small, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    tool("train.py", "--trainer.max_epochs", "1")
    assert (tmp_path / CKPT).is_file() and (tmp_path / "runs/quickstart_events/version_0/metrics.csv").is_file()
    report = tool("eval.py", "--ckpt", CKPT, "--json", "m.json", "--out", "eval")
    results = json.loads((tmp_path / "m.json").read_text())
    assert len(results["map_50_per_step"]) == 4 and set(results["per_class"]) == {"disc", "square", "triangle", "plus"}
    assert "mean_firing_rate" in results and "mean firing rate" in report
    assert len(list((tmp_path / "eval").glob("val_*.png"))) == 4  # event frames drawn with their boxes
    # a recording streamed window by window with the state carried: 0.4 s of events, 50 ms frames
    write_dat(tmp_path / "rec_td.dat", random_events(np.random.default_rng(1), 3000, 304, 240, 400_000))
    tool("predict.py", "--ckpt", CKPT, "--stream", "rec_td.dat", "--out", "stream", "--score", "0")
    lines = (tmp_path / "stream" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(list((tmp_path / "stream").glob("window_*.png"))) == 2  # 8 frames, windows of T = 4
