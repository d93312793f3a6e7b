"""A run rebuilt from a checkpoint alone (CLI-trained and plain-Trainer-trained), overridden by a config."""
import json

import pytest
import torch

from spikeloc.checkpoints import CheckpointError
from spikeloc.cli import SpikelocCLI
from spikeloc.evaluate import build_run, checkpoint_args, format_report, summary
from spikeloc.training import SpikingClassifier
from tests.test_cli import QUICKSTART
from tests.training.test_detection_module import shapes, tiny_detector
from tests.training.tiny import QuadrantData, tiny_classifier, trainer


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """A checkpoint written by the training CLI (``tools/train.py``) with a scheduler and an optimizer."""
    folder = tmp_path_factory.mktemp("cli")
    cli = SpikelocCLI(args=["--config", QUICKSTART, "--trainer.logger", "false", "--trainer.max_epochs", "1",
                            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                            "--trainer.enable_progress_bar", "false", "--data.init_args.num_train", "64",
                            "--data.init_args.num_val", "64", "--checkpoint.dirpath", str(folder),
                            "--trainer.default_root_dir", str(folder),  # its config.yaml goes there
                            "--model.init_args.scheduler", "torch.optim.lr_scheduler.StepLR",
                            "--model.init_args.scheduler.step_size", "1"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return folder / "last.ckpt", cli


def test_cli_checkpoint_loads_with_no_config(cli_checkpoint):
    path, cli = cli_checkpoint
    loaded = SpikingClassifier.load_from_checkpoint(path)
    assert loaded.hparams["model_kwargs"] == {"channels": [16, 32, 64]} and loaded.fptt_config.parts is None
    for got, want in zip(loaded.state_dict().values(), cli.model.state_dict().values()):
        assert torch.equal(got, want)


def test_run_from_a_cli_checkpoint_and_a_config_on_top(cli_checkpoint):
    path, cli = cli_checkpoint
    run = build_run(path)
    assert type(run.model) is SpikingClassifier and run.model.net.num_classes == 10
    assert run.datamodule.hparams["num_val"] == 64  # the datamodule the checkpoint was trained with
    metrics = run.trainer.validate(run.model, datamodule=run.datamodule, ckpt_path=path, verbose=False)[0]
    report = format_report(summary(metrics, "val"))
    assert "acc" in report and "mean firing rate" in report
    config = build_run(path, QUICKSTART, ["--data.init_args.num_val", "32", "--model.init_args.num_steps", "2"])
    assert config.datamodule.hparams["num_val"] == 32 and config.model.num_steps == 2


def test_run_from_a_plain_trainer_checkpoint(tmp_path):
    data, module = shapes(num_val=4), tiny_detector(conf_threshold=0.02)
    fit = trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    fit.fit(module, datamodule=data)
    module.hparams["compile_step"] = True  # as if trained with the compiled step
    fit.save_checkpoint(tmp_path / "plain.ckpt")
    model = json.loads(checkpoint_args(tmp_path / "plain.ckpt")[1])
    assert "num_classes" not in model["init_args"]  # linked from the datamodule
    run = build_run(tmp_path / "plain.ckpt", overrides=["--model.init_args.iou_threshold", "0.3"])
    assert (run.model.postprocess.conf_threshold, run.model.postprocess.iou_threshold) == (0.02, 0.3)
    assert run.model.model.anchors == module.model.anchors and run.datamodule.image_size == 64
    assert run.model.compile_step is False  # evaluation does not compile unless asked
    asked = build_run(tmp_path / "plain.ckpt", overrides=["--model.init_args.compile_step", "true"])
    assert asked.model.compile_step is True


def test_missing_datamodule_arguments_are_named(tmp_path):
    module = tiny_classifier()
    fit = trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    fit.fit(module, datamodule=QuadrantData())  # a datamodule without save_hyperparameters
    fit.save_checkpoint(tmp_path / "quadrant.ckpt")
    with pytest.raises(ValueError, match="no datamodule arguments.*--config"):
        build_run(tmp_path / "quadrant.ckpt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_run(tmp_path / "missing.ckpt")


def test_an_override_that_changes_the_architecture_is_summarised(cli_checkpoint):
    path, _ = cli_checkpoint
    with pytest.raises(CheckpointError, match="missing|other shape"):
        build_run(path, overrides=["--model.init_args.model_kwargs", '{"channels": [8, 16, 32]}'])


@pytest.mark.parametrize("flag, where, message", [
    ("--json", "a_file/m.json", "'{tmp}/a_file' is a file, not a folder"),
    ("--json", "a_folder", "is a folder; give a file name"),
    ("--out", "a_file/eval", "'{tmp}/a_file' is a file, not a folder"),
    ("--out", "a_file", "is a file; give a folder"),
])
def test_an_unwritable_output_fails_before_the_evaluation(tmp_path, monkeypatch, capsys, flag, where, message):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("eval_tool", Path(__file__).parents[2] / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    monkeypatch.setattr(tool, "build_run", lambda *a: pytest.fail("the evaluation started"))
    monkeypatch.setattr("sys.argv", ["eval.py", "--ckpt", "some.ckpt", flag, str(tmp_path / where)])
    with pytest.raises(SystemExit) as stop:
        tool.main()
    expected = f"{flag} {tmp_path / where}: " + message.format(tmp=tmp_path)
    assert stop.value.code == 2 and expected in capsys.readouterr().err
