"""A real ``tools/train.py`` process SIGKILLed or SIGTERMed mid-epoch, resumed with ``--ckpt_path last``,
ends with exactly the weights of an uninterrupted run (same run folder, same final checkpoint)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
BATCHES = 8  # per epoch: 64 samples / 8


def write_config(folder: Path, every_n_train_steps: int = 0, pause: dict | None = None) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(folder), "name": "run"}}},
        "model": {"class_path": "spikeloc.training.SpikingClassifier",
                  "init_args": {"model": "ltc_convnet", "model_kwargs": {"channels": [4, 8]}, "num_steps": 2,
                                "fptt": {"parts": 2}, "optimizer": {"class_path": "torch.optim.Adam",
                                                                    "init_args": {"lr": 0.01}}}},
        "data": {"class_path": "tests.training.tiny.QuadrantData", "init_args": {"num_train": 64, "batch_size": 8}},
        "checkpoint": {"every_n_train_steps": every_n_train_steps} if every_n_train_steps else {},
    }
    if pause:
        config["trainer"]["callbacks"] = [{"class_path": "tests.training.tiny.PauseAt", "init_args": pause}]
    path = folder / ("pause.yaml" if pause else "run.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "tools/train.py", "--config", str(config), *extra], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = process.communicate(timeout=180)
        return process.returncode, out
    return process


def final_state(folder: Path) -> dict:
    checkpoint = torch.load(folder / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * 2 * BATCHES
    return {**checkpoint["state_dict"], **{f"fptt.{k}.{i}": t for k in ("running", "trace")
                                            for i, t in enumerate(checkpoint["fptt"][k])}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    code, out = train(write_config(folder))
    assert code == 0, out
    return final_state(folder)


def interrupt(folder: Path, signum: int, batch: int, every_n_train_steps: int = 0) -> str:
    marker = folder / "paused"
    config = write_config(folder, every_n_train_steps, pause={"batch": batch, "marker": str(marker)})
    process = train(config, wait=False)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[0]
    process.send_signal(signum)
    out, _ = process.communicate(timeout=120)
    return process.returncode, out


def assert_same(resumed: dict, straight: dict):
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


@pytest.mark.slow  # three tools/train.py processes (the uninterrupted one shared): ~40 s
def test_sigterm_mid_epoch_saves_and_resumes_to_the_same_weights(tmp_path, uninterrupted):
    code, out = interrupt(tmp_path, signal.SIGTERM, batch=5)
    assert code == 128 + signal.SIGTERM, out
    assert "SIGTERM: stopped at epoch 0, step 12" in out and "--ckpt_path last" in out
    saved = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 12
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_served": 6}]
    code, out = train(write_config(tmp_path), "--ckpt_path", "last")
    assert code == 0, out
    assert not (tmp_path / "run" / "version_1").exists()  # resumed in the same run folder
    assert_same(final_state(tmp_path), uninterrupted)


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_step_checkpoint(tmp_path, uninterrupted):
    code, out = interrupt(tmp_path, signal.SIGKILL, batch=BATCHES + 5, every_n_train_steps=4)
    assert code == -signal.SIGKILL
    saved = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 24  # after batch 11: epoch 1, 4 batches in
    code, out = train(write_config(tmp_path, 4), "--ckpt_path", "last")
    assert code == 0, out
    assert not (tmp_path / "run" / "version_1").exists()
    assert_same(final_state(tmp_path), uninterrupted)
