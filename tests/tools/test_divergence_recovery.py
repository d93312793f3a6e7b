"""README, Troubleshooting, as written: a run whose learning rate blows up stops naming its last checkpoint;
fixing the config and running the printed resume command finishes the run from that checkpoint."""
import math
import shlex

import pytest
import torch
import yaml

from spikeloc.cli import train
from spikeloc.training.guard import NonFiniteError

BATCHES = 8  # per epoch: 64 samples / 8


def write_config(folder, lr: float, gamma: float):
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(folder / "runs"), "name": "run"}}},
        "model": {"class_path": "spikeloc.training.SpikingClassifier",
                  "init_args": {"model": "ltc_convnet", "model_kwargs": {"channels": [4, 8]}, "num_steps": 2,
                                "fptt": {"parts": 2},
                                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}},
                                "scheduler": {"class_path": "torch.optim.lr_scheduler.ExponentialLR",
                                              "init_args": {"gamma": gamma}}}},
        "data": {"class_path": "tests.training.tiny.QuadrantData", "init_args": {"num_train": 64, "batch_size": 8}},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fix_the_learning_rate_and_resume_from_last_ckpt(tmp_path):
    config = write_config(tmp_path, lr=0.002, gamma=1e30)  # epoch 0 fine, then lr 2e27: diverges in epoch 1
    with pytest.raises(NonFiniteError) as stop:
        train(["--config", str(config)])
    last = tmp_path / "runs" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    message = str(stop.value)
    assert f"The last checkpoint, {last}, holds finite weights" in message
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2 * BATCHES and saved["optimizer_states"][0]["param_groups"][0]["lr"] == 2e27
    write_config(tmp_path, lr=0.002, gamma=0.5)  # the fix
    command = shlex.split(message.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "tools/train.py"] and command[-2:] == ["--ckpt_path", "last"]
    train(command[2:])
    done = torch.load(last, weights_only=True)
    assert done["global_step"] == 3 * 2 * BATCHES and done["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in done["state_dict"].values())
    assert math.isclose(done["optimizer_states"][0]["param_groups"][0]["lr"], 0.002 * 0.5 ** 3)
    assert done["lr_schedulers"][0]["gamma"] == 0.5 and done["lr_schedulers"][0]["last_epoch"] == 3


def test_a_run_that_diverges_before_its_first_checkpoint_says_so(tmp_path):
    config = write_config(tmp_path, lr=1e30, gamma=1.0)
    with pytest.raises(NonFiniteError, match="No checkpoint was written before this: .* without --ckpt_path"):
        train(["--config", str(config)])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_an_unchanged_config_resumes_with_the_checkpoint_s_own_optimizer_and_schedule(tmp_path, caplog):
    config = write_config(tmp_path, lr=0.002, gamma=0.5)
    train(["--config", str(config), "--trainer.max_epochs", "1"])
    caplog.clear()
    train(["--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert "resumed with the config's optimizer" not in caplog.text  # nothing replaced: the resume is exact
    done = torch.load(tmp_path / "runs" / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert done["global_step"] == 2 * 2 * BATCHES and done["lr_schedulers"][0]["_last_lr"] == [0.002 * 0.5 ** 2]


def test_a_changed_learning_rate_applies_on_resume(tmp_path, caplog):
    train(["--config", str(write_config(tmp_path, lr=0.002, gamma=0.5)), "--trainer.max_epochs", "1"])
    caplog.clear()
    train(["--config", str(write_config(tmp_path, lr=0.001, gamma=0.5)), "--trainer.max_epochs", "2",
           "--ckpt_path", "last"])
    assert "resumed with the config's optimizer and schedule settings: learning rate now 0.0005" in caplog.text
    done = torch.load(tmp_path / "runs" / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert math.isclose(done["optimizer_states"][0]["param_groups"][0]["lr"], 0.001 * 0.5 ** 2)
