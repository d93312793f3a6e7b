"""Checkpoint files: every unreadable one is named with what is wrong; a mismatch is summarised."""
import importlib

import pytest
import torch

from spikeloc.checkpoints import MOVED, CheckpointError, check_architecture, read_checkpoint, upgrade
from tests.training.tiny import QuadrantData, tiny_classifier, trainer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    run = trainer(folder, limit_train_batches=1, limit_val_batches=0)
    run.fit(tiny_classifier(), datamodule=QuadrantData())
    run.save_checkpoint(folder / "good.ckpt")
    return folder / "good.ckpt"


def test_a_good_checkpoint_reads_and_fits(saved):
    checkpoint = read_checkpoint(saved)
    assert "state_dict" in checkpoint
    check_architecture(checkpoint, tiny_classifier())


@pytest.mark.parametrize("make, message", [
    (lambda p, good: None, "does not exist"),
    (lambda p, good: p.mkdir(), "is a folder"),
    (lambda p, good: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p, good: p.write_bytes(good.read_bytes()[:5000]), "is truncated or not a PyTorch checkpoint"),
    (lambda p, good: p.write_text("hello"), "is truncated or not a PyTorch checkpoint"),
    (lambda p, good: torch.save([1, 2], p), "holds a list, not a dict"),
    (lambda p, good: torch.save({"epoch": 3}, p), "has no 'state_dict'"),
])
def test_unreadable_checkpoints_are_named_with_the_reason(tmp_path, saved, make, message):
    path = tmp_path / "bad.ckpt"
    make(path, saved)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and message in str(err.value)


def mismatch(checkpoint, path):
    other = tiny_classifier(model_kwargs={"channels": [8, 16, 32]}, num_classes=3)
    with pytest.raises(CheckpointError) as err:
        check_architecture(checkpoint, other, path)
    text = str(err.value)
    assert f"checkpoint '{path}' does not fit this model (38 tensors in the model, 26 saved)" in text
    assert "12 missing from the checkpoint: net.cells.2" in text and "(7 more)" in text
    assert "2 of another shape: net.fc.bias (4,) vs (3,)" in text
    assert len(text) < 3000  # a summary, not load_state_dict's dump
    return text


def test_architecture_mismatch_names_the_saved_model_arguments(saved):
    checkpoint = read_checkpoint(saved)
    checkpoint["hyper_parameters"] = {"model": "ltc_convnet", "model_kwargs": {"channels": [8, 16]}, "num_classes": 4}
    text = mismatch(checkpoint, saved)
    assert "channels: [8, 16]" in text and "num_classes: 4" in text


def test_architecture_mismatch_names_the_run_config(tmp_path, saved):
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.write_bytes(saved.read_bytes())
    (tmp_path / "config.yaml").write_text("model: {}\n")
    checkpoint = read_checkpoint(path)
    checkpoint.pop("hyper_parameters", None)  # an older checkpoint: only the run's config tells
    assert f"pass --config {tmp_path / 'config.yaml'}" in mismatch(checkpoint, path)


def test_train_checks_an_explicit_checkpoint_before_building(tmp_path, capsys):
    from spikeloc.cli import SpikelocCLI
    from tests.test_cli import QUICKSTART
    (tmp_path / "cut.ckpt").write_text("x")
    with pytest.raises(SystemExit):
        SpikelocCLI(args=["--config", QUICKSTART, "--ckpt_path", str(tmp_path / "cut.ckpt")])
    assert f"checkpoint '{tmp_path / 'cut.ckpt'}' is truncated" in capsys.readouterr().err


@pytest.mark.parametrize("old, backend", [({"native": True, "fused": True}, "auto"), ({"native": True}, "auto"),
                                          ({"compile": True, "fused": True}, "compiled"), ({"fused": True}, "fused"),
                                          ({"fused": False, "compile": False, "native": False}, "eager")])
def test_the_neuron_flags_before_backend_become_the_backend(old, backend):
    checkpoint = upgrade({"hyper_parameters": {"backbone_kwargs": {"width": 0.5, **old},
                                               "neck_kwargs": {"neuron_kwargs": dict(old)}, "model_kwargs": dict(old)}})
    hparams = checkpoint["hyper_parameters"]
    assert hparams["backbone_kwargs"] == {"width": 0.5, "backend": backend}
    assert hparams["neck_kwargs"]["neuron_kwargs"] == hparams["model_kwargs"] == {"backend": backend}


@pytest.mark.parametrize("native, backend", [(True, "cpu_kernels"), (None, "auto"), (False, "eager")])
def test_the_fptt_flags_before_backend_become_the_backend(native, backend):
    checkpoint = upgrade({"hyper_parameters": {"fptt": {"alpha": 0.1, "compile": True, "native": native}}})
    assert checkpoint["hyper_parameters"]["fptt"] == {"alpha": 0.1, "backend": backend}


def test_every_moved_module_is_where_the_table_says():
    for old, new in MOVED.items():
        assert new.startswith(old.rsplit(".", 1)[0] + ".") and importlib.import_module(new)
    assert len(set(MOVED.values())) == len(MOVED)


def test_an_older_checkpoint_rebuilds_under_todays_names(tmp_path):
    """A detector checkpoint as written before datamodules/ was split by kind and before the neuron backend: its
    class paths and flags are read in today's names, and the run it describes is rebuilt with its weights."""
    from datamodules.detection.shapes import ShapesDetectionDataModule
    from spikeloc.evaluate import build_run
    from spikeloc.neurons.backend import backends
    from tests.training.test_detection_module import shapes, tiny_detector

    module, data = tiny_detector(), shapes()
    hparams = {k: v for k, v in module.hparams.items() if not callable(v)}
    hparams["backbone_kwargs"] = {"width": 0.125, "fused": True, "native": True}
    hparams["neck_kwargs"] = {"neuron_kwargs": {"fused": True, "compile": True}}
    hparams["fptt"] = {k: v for k, v in hparams["fptt"].items() if k != "backend"} | {"compile": None, "native": True}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "datamodule_hyper_parameters": {**data.hparams, "_class_path": "datamodules.shapes.ShapesDetection"
                                                                              "DataModule"},
                "class_paths": {"model": "spikeloc.training.detection.SpikingDetector",
                                "data": "datamodules.shapes.ShapesDetectionDataModule"}}, tmp_path / "old.ckpt")
    run = build_run(tmp_path / "old.ckpt")
    assert type(run.datamodule) is ShapesDetectionDataModule and run.datamodule.image_size == 64
    assert set(backends(run.model.model.backbone)) == {"auto"} and set(backends(run.model.model.neck)) == {"compiled"}
    assert run.model.fptt_config.backend == "cpu_kernels"
    run.model.load_state_dict(module.state_dict())  # the weights fit the rebuilt model exactly
