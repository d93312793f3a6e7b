"""The command line: configs resolve, print back, and bad keys or types fail before training."""
import subprocess
import sys
from pathlib import Path

import pytest

from spikeloc.cli import SpikelocCLI

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def test_config_builds_linked_model_and_data():
    cli = SpikelocCLI(args=["--config", QUICKSTART, "--trainer.max_epochs", "7", "--trainer.logger", "false"])
    assert cli.trainer.max_epochs == 7
    assert cli.model.net.num_classes == cli.datamodule.num_classes
    assert cli.model.algorithm == "fptt" and cli.model.fptt_config.parts is None  # K = T


def test_num_steps_alone_sets_the_fptt_updates(tmp_path):
    cli = SpikelocCLI(args=["--config", QUICKSTART, "--model.init_args.num_steps", "6", "--trainer.logger", "false",
                            "--data.init_args.num_train", "64", "--trainer.limit_train_batches", "1",
                            "--trainer.limit_val_batches", "0", "--trainer.max_epochs", "1",
                            "--checkpoint.dirpath", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 6  # one FPTT update per time step


def test_datamodule_sizes_and_names_are_linked_into_the_detector():
    cli = SpikelocCLI(args=["--config", str(ROOT / "configs" / "quickstart_detect.yaml"), "--trainer.logger", "false",
                            "--data.init_args.image_size", "96"])
    assert cli.model.image_size == 96 and cli.model.class_names == cli.datamodule.class_names
    assert cli.model.hparams["image_size"] == 96 and cli.model.hparams["num_classes"] == 5


def test_print_config_round_trips():
    out = subprocess.run([sys.executable, "tools/train.py", "--config", QUICKSTART, "--model.init_args.num_steps",
                          "6", "--print_config"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "num_steps: 6" in out and "class_path: spikeloc.training.SpikingClassifier" in out


@pytest.mark.parametrize("override, message", [
    (["--model.init_args.num_stepz", "3"], "num_stepz"),
    (["--model.init_args.num_steps", "three"], "num_steps"),
    (["--model.init_args.algorithm", "rtrl"], "algorithm"),
])
def test_bad_keys_and_types_are_named(override, message, capsys):
    with pytest.raises(SystemExit):
        SpikelocCLI(args=["--config", QUICKSTART, *override])
    assert message in capsys.readouterr().err


def test_what_model_and_data_both_record_agree_so_a_logger_can_merge_them():
    cli = SpikelocCLI(args=["--config", str(ROOT / "configs" / "quickstart_events.yaml"), "--trainer.logger", "false"])
    model, data = cli.model.hparams_initial, cli.datamodule.hparams_initial
    shared = (model.keys() & data.keys()) - {"_class_path"}
    assert {"num_steps", "class_names", "image_size"} <= shared
    assert all(model[key] == data[key] for key in shared), {k: (model[k], data[k]) for k in shared}
    assert cli.model.num_steps == 4 and len(cli.model.maps) == 4  # T of the event sequences, linked


def test_a_static_datamodule_leaves_the_model_its_own_num_steps():
    cli = SpikelocCLI(args=["--config", QUICKSTART, "--model.init_args.num_steps", "3", "--trainer.logger", "false"])
    assert cli.datamodule.hparams.get("num_steps") is None and cli.model.num_steps == 3


@pytest.mark.parametrize("value, expected", [("1", 1), ("1.0", 1.0), ("0.25", 0.25), ("3", 3)])
def test_an_integer_batch_limit_is_a_count_of_batches(value, expected):
    cli = SpikelocCLI(args=["--config", QUICKSTART, "--trainer.logger", "false",
                            "--trainer.limit_train_batches", value])
    assert cli.trainer.limit_train_batches == expected and type(cli.trainer.limit_train_batches) is type(expected)


def test_runs_started_at_once_in_one_save_dir_take_different_version_folders(tmp_path):
    args = ["--config", QUICKSTART, "--trainer.logger.init_args.save_dir", str(tmp_path)]
    first, second = SpikelocCLI(args=args), SpikelocCLI(args=args)  # neither has written anything yet
    assert Path(first.trainer.log_dir).name == "version_0" and Path(second.trainer.log_dir).name == "version_1"
    assert Path(first.trainer.log_dir).is_dir() and Path(second.trainer.log_dir).is_dir()


def test_concurrent_claims_never_share_a_version(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from jsonargparse import Namespace

    from spikeloc.checkpoints import claim_version
    (tmp_path / "run" / "version_3").mkdir(parents=True)
    barrier = Barrier(8)

    def claim(_):
        config = Namespace(trainer=Namespace(default_root_dir=".", logger=Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=str(tmp_path), name="run",
                                                                                  version=None))))
        barrier.wait()
        folder = claim_version(config)
        assert folder.name == f"version_{config.trainer.logger.init_args.version}"
        return folder.name
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(claim, range(8)))
    assert sorted(names, key=lambda n: int(n[8:])) == [f"version_{k}" for k in range(4, 12)]


def test_resuming_with_another_architecture_is_one_clear_error_and_leaves_no_folder(tmp_path, capsys):
    from spikeloc.cli import train
    runs = ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    train(["--config", QUICKSTART, *runs, "--data.init_args.num_train", "64", "--data.init_args.num_val", "64",
           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])
    ckpt = tmp_path / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train(["--config", QUICKSTART, *runs, "--model.init_args.model_kwargs", "{channels: [8, 16, 32]}",
               "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"checkpoint '{ckpt}' does not fit this model" in err
    assert "of another shape" in err and "channels: [16, 32, 64]" in err  # what it was trained with
    assert len(err.splitlines()) < 40 and "size mismatch" not in err and "usage:" not in err
    assert f"pass --config {ckpt.parents[1] / 'config.yaml'}" in err
    assert sorted(p.name for p in (tmp_path / "quickstart").iterdir()) == ["version_0"]  # nothing new
