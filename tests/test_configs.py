"""Every file in ``configs/`` runs as its header documents: one training and one validation batch with
the logger, callbacks and checkpointing it ships with, on tiny fixtures written in each dataset's real
on-disk layout under ``data/`` of a fresh working folder (where the configs' default roots point).
Only the batch limits are added (one epoch of one batch, then validation), and configs whose header
says they need a GPU run at a tiny size."""
from __future__ import annotations

import contextlib
import csv
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.core.saving import load_hparams_from_yaml

from spikeloc.cli import SpikelocCLI, train
from tests.datamodules.classification.test_vision import write_mnist
from tests.event_formats import (random_events, write_aedat4, write_atis_bin, write_dat, write_gen1_boxes,
                                 write_gesture_npy, write_ncaltech_annotation)
from tests.formats import write_coco_fixture, write_voc_fixture
from tests.models.test_yolov4_tiny_weights import YoloBody

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(path.name for path in (REPO / "configs").glob("*.yaml"))
LIMITS = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1",
          "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false"]
TINY_DETECTOR = ["--model.init_args.num_steps", "2", "--data.init_args.image_size", "64"]
# configs whose header says they need a GPU, at a tiny size here (widths, input side, T)
GPU_SIZED = {
    "spyv4_voc.yaml": TINY_DETECTOR,  # full width: it starts from the full-size YOLOv4-tiny file below
    "spyv4_coco.yaml": [*TINY_DETECTOR, "--model.init_args.backbone_kwargs", "{width: 0.125, neuron: ltc}"],
    # the width of the backbone pretrained by configs/pretrain_spyv4_shapes.yaml, as the headers say
    "finetune_voc.yaml": [*TINY_DETECTOR, "--model.init_args.backbone_kwargs", "{width: 0.25, neuron: ltc}"],
    "gen1_spyv4.yaml": ["--data.init_args.image_size", "64", "--model.init_args.backbone_kwargs", "{width: 0.125}"],
}
PRETRAINED = "runs/pretrain_spyv4_shapes/version_0/checkpoints/last.ckpt"  # what that config's header names


def header_command(name: str) -> list[str]:
    """The arguments of the ``python tools/train.py --config configs/<name>`` line of the config's header
    (continuation lines joined, ``[optional]`` parts left out), run from the working folder: ``/path/to/...``
    data roots are dropped (the default roots point at the fixtures) and ``path/to/backbone.ckpt`` is the
    pretraining run's checkpoint."""
    header = (REPO / "configs" / name).read_text().split("\nseed_everything", 1)[0]
    lines = [line.lstrip("#").strip() for line in header.splitlines()]
    marker = f"python tools/train.py --config configs/{name}"
    at = next((i for i, line in enumerate(lines) if line.startswith(marker)), None)
    assert at is not None, f"{name}: the header does not document its training command"
    command = lines[at]
    while command.endswith("\\"):
        at += 1
        command = command[:-1] + " " + lines[at]
    words = [w for w in shlex.split(command)[2:] if not w.startswith("[") and not w.endswith("]")]
    pairs = [(words[i], words[i + 1]) for i in range(0, len(words), 2)]
    replace = {f"configs/{name}": str(REPO / "configs" / name), "path/to/backbone.ckpt": PRETRAINED}
    return [word for key, value in pairs if not value.startswith("/path/to/")
            for word in (key, replace.get(value, value))]


def write_datasets(data: Path) -> None:
    """Every dataset a config reads, in its published layout, a few samples each."""
    write_voc_fixture(data / "VOCdevkit", "2007", {"trainval": 2, "test": 2})
    write_voc_fixture(data / "VOCdevkit", "2012", {"trainval": 2}, seed=1)
    write_coco_fixture(data / "coco", {"train2017": 3, "val2017": 2})
    rng = np.random.default_rng(0)
    for folder in ("ibmGestureTrain", "ibmGestureTest"):
        for label in range(2):  # dense enough that the 10 ms denoise filter keeps some
            write_gesture_npy(data / "DVSGesture" / folder / "user01_led" / f"{label}.npy",
                              random_events(rng, 4000, 128, 128, 200_000))
    for name in ("airplane", "dog"):
        for k in range(3):
            write_aedat4(data / "CIFAR10DVS" / name / f"{k}.aedat4", random_events(rng, 20, 128, 128, 100_000))
    for split in ("train", "val", "test"):
        write_dat(data / "gen1" / split / "r_td.dat", random_events(rng, 200, 304, 240, 2_000_000))
        write_gen1_boxes(data / "gen1" / split / "r_bbox.npy", [(1_000_000, 20, 30, 40, 30, 0, 1.0, 1)])
    for split in ("Train", "Test"):
        for digit in range(2):
            for k in range(2):
                path = data / "NMNIST" / split / str(digit) / f"{k:05d}.bin"
                write_atis_bin(path, random_events(rng, 60, 34, 34, 300_000))
    ncaltech = data / "NCALTECH101"  # recordings with their boxes (classification and detection)
    for name in ("airplanes", "watch"):
        for k in range(1, 6):
            write_atis_bin(ncaltech / "Caltech101" / name / f"image_{k:04d}.bin",
                           random_events(rng, 200, 230, 170, 300_000))
            write_ncaltech_annotation(ncaltech / "Caltech101_annotations" / name / f"annotation_{k:04d}.bin",
                                      20 + k, 15, 180, 150 - k)
    write_mnist(data)
    weights = data.parent / "weights" / "yolov4_tiny_weights_voc.pth"  # spyv4_voc.yaml's init_from, random values
    weights.parent.mkdir()
    torch.save(YoloBody().state_dict(), weights)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The working folder: ``data/`` holds every dataset (where the configs' default roots point)."""
    folder = tmp_path_factory.mktemp("work")
    write_datasets(folder / "data")
    return folder


@pytest.fixture(scope="module")
def run_config(work):
    """``run_config(name)`` trains the config once in the working folder; returns its run folder."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            if name == "finetune_voc.yaml":
                run("pretrain_spyv4_shapes.yaml")
            logger = yaml.safe_load((REPO / "configs" / name).read_text())["trainer"]["logger"]["init_args"]
            with contextlib.chdir(work):
                train([*header_command(name), *LIMITS, *GPU_SIZED.get(name, [])])
            done[name] = work / logger["save_dir"] / logger["name"] / "version_0"
        return done[name]
    return run


def metrics(folder: Path) -> dict[str, list[float]]:
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows if row[key]] for key in rows[0]}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_config_trains_and_validates_with_its_logger_as_its_header_says(name, run_config):
    header = (REPO / "configs" / name).read_text().split("\nseed_everything", 1)[0]
    assert ("Needs a GPU" in header) == (name in GPU_SIZED)
    folder = run_config(name)
    assert {"config.yaml", "hparams.yaml", "metrics.csv", "checkpoints"} <= {p.name for p in folder.iterdir()}
    logged = metrics(folder)
    assert logged["train/loss_epoch"] and all(np.isfinite(logged["train/loss_epoch"]))
    assert any(values for key, values in logged.items() if key.startswith("val/"))
    saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= 1 and saved["hyper_parameters"] and saved["datamodule_hyper_parameters"]
    recorded = load_hparams_from_yaml(folder / "hparams.yaml")  # the model's and the datamodule's, merged
    both = {*saved["hyper_parameters"], *saved["datamodule_hyper_parameters"]}
    assert {key for key in both if not key.startswith("_")} <= set(recorded)


@pytest.mark.parametrize("name", sorted(GPU_SIZED))
def test_a_config_that_needs_a_gpu_builds_at_full_size(name, work, run_config):
    if name == "finetune_voc.yaml":
        run_config("pretrain_spyv4_shapes.yaml")  # its backbone file, at the width its header names
    width = GPU_SIZED["finetune_voc.yaml"][-2:] if name == "finetune_voc.yaml" else []
    with contextlib.chdir(work):
        cli = SpikelocCLI(args=[*header_command(name), *width, "--trainer.logger", "false"], save_config_callback=None)
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    assert cli.model.image_size == config["data"]["init_args"]["image_size"] >= 320
    assert cli.model.num_steps == config["model"]["init_args"].get("num_steps", config["data"]["init_args"].get(
        "num_steps"))
    assert (cli.model.hparams["backbone_kwargs"] or {}).get("width", 1.0) == (0.25 if width else 1.0)
