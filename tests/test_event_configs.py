"""The event and sequence configs build (data linked into the model) on tiny real-format fixtures;
the events quick start trains and evaluates through tools/."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikeloc.cli import SpikelocCLI
from tests.datamodules.test_vision import write_mnist
from tests.event_formats import random_events, write_aedat4, write_dat, write_gen1_boxes, write_gesture_npy

REPO = Path(__file__).resolve().parents[1]


def _gesture(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder in ("ibmGestureTrain", "ibmGestureTest"):
        for label in range(3):
            write_gesture_npy(root / "DVSGesture" / folder / "user01_led" / f"{label}.npy",
                              random_events(rng, 50, 128, 128, 1_000_000))


def _cifar(root: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("airplane", "dog"):
        for k in range(5):
            write_aedat4(root / "CIFAR10DVS" / name / f"{k}.aedat4", random_events(rng, 20, 128, 128, 100_000))


def _gen1(root: Path) -> None:
    for split in ("train", "val", "test"):
        write_dat(root / split / "r_td.dat", random_events(np.random.default_rng(2), 200, 304, 240, 2_000_000))
        write_gen1_boxes(root / split / "r_bbox.npy", [(1_000_000, 20, 30, 40, 30, 0, 1.0, 1)])


CASES = {
    "dvs_gesture.yaml": (_gesture, "SpikingClassifier", 11, 2),
    "cifar10_dvs.yaml": (_cifar, "SpikingClassifier", 10, 2),
    "psmnist.yaml": (write_mnist, "SpikingClassifier", 10, 1),
    "gen1_spyv4.yaml": (_gen1, "SpikingDetector", 2, 2),
    "add_task.yaml": (None, "SpikingRegressor", 1, 2),
    "quickstart_events.yaml": (None, "SpikingDetector", 4, 2),
}


@pytest.mark.parametrize("config", sorted(CASES))
def test_config_builds_with_linked_data(config, tmp_path):
    write, model_class, classes, channels = CASES[config]
    args = ["--config", str(REPO / "configs" / config), "--trainer.logger", "false"]
    if write is not None:
        write(tmp_path)
        args += ["--data.init_args.root", str(tmp_path)]
    if "cache_dir" in (REPO / "configs" / config).read_text():
        args += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    cli = SpikelocCLI(args=args, save_config_callback=None)
    assert type(cli.model).__name__ == model_class
    assert cli.datamodule.num_classes == classes and cli.datamodule.in_channels == channels
    net = cli.model.net if hasattr(cli.model, "net") else cli.model.model.backbone
    outputs = cli.model.num_classes if model_class == "SpikingDetector" else net.num_classes
    assert net.in_chans == channels and outputs == classes  # linked from the datamodule


@pytest.mark.slow
def test_quickstart_events_trains_and_evaluates_through_the_tools(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    small = ["--config", "configs/quickstart_events.yaml", "--data.init_args.num_train", "8",
             "--data.init_args.num_val", "4", "--data.init_args.batch_size", "4",
             "--model.init_args.backbone_kwargs", '{"width": 0.125}', "--trainer.enable_progress_bar", "false"]

    def tool(script, *args):
        done = subprocess.run([sys.executable, f"tools/{script}", *small, *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    tool("train.py", "--trainer.max_epochs", "1", "--trainer.logger", "false",
         "--trainer.default_root_dir", str(tmp_path / "runs"), "--checkpoint.dirpath", str(tmp_path / "ckpt"))
    report = tool("eval.py", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--json", str(tmp_path / "m.json"),
                  "--out", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "m.json").read_text())
    assert len(results["map_50_per_step"]) == 4 and set(results["per_class"]) == {"disc", "square", "triangle", "plus"}
    assert "mean_firing_rate" in results and "mean firing rate" in report
    assert len(list((tmp_path / "eval").glob("val_*.png"))) == 4  # event frames drawn with their boxes
    # a recording streamed window by window with the state carried: 0.4 s of events, 50 ms frames
    write_dat(tmp_path / "rec_td.dat", random_events(np.random.default_rng(1), 3000, 304, 240, 400_000))
    out = tmp_path / "stream"
    tool("predict.py", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--stream", str(tmp_path / "rec_td.dat"),
         "--out", str(out), "--score", "0")
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(list(out.glob("window_*.png"))) == 2  # 8 frames, windows of T = 4
