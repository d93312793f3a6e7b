"""What ``tools/eval.py`` and ``tools/predict.py`` share: a run rebuilt from a checkpoint (optionally
overridden by a config), a readable report of the logged metrics, and image files as a dataset."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import DataLoader, Dataset

from spikeloc.checkpoints import check_architecture, load_checkpoint
from spikeloc.cli import LINKED_FROM_DATA, SpikelocCLI

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _accepts(class_path: str) -> Callable[[str], bool]:
    """Whether the class's ``__init__`` takes an argument of that name (all, with ``**kwargs``)."""
    module, _, name = class_path.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return lambda key: True
    return lambda key: key in parameters


def _component(hparams: dict[str, Any] | None, class_path: str | None, drop: Sequence[str] = ()) -> str | None:
    """``{"class_path", "init_args"}`` as JSON from saved hyperparameters (``None`` when there are none).

    Without the CLI, Lightning also saves the arguments of base-class ``__init__`` frames; those the
    class itself does not take are left out."""
    hparams = dict(hparams or {})
    class_path = hparams.pop("_class_path", None) or class_path
    if not class_path or not hparams:
        return None
    accepts = _accepts(class_path)
    init_args = {key: value for key, value in hparams.items()
                 if not key.startswith("_") and key not in drop and accepts(key)}
    return json.dumps({"class_path": class_path, "init_args": init_args})


def checkpoint_args(path: str | Path, checkpoint: dict[str, Any] | None = None) -> list[str]:
    """CLI arguments that rebuild the model and datamodule a checkpoint was trained with (``checkpoint``:
    the file's content when already read).

    The model's init arguments come from its ``hyper_parameters``, the datamodule's from
    ``datamodule_hyper_parameters``; ``num_classes``, ``in_channels``, ``image_size`` and
    ``class_names`` are left to the CLI's links from the datamodule.
    """
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
    classes = checkpoint.get("class_paths") or {}
    model = _component(checkpoint.get("hyper_parameters"), classes.get("model"), LINKED_FROM_DATA)
    if model is None:
        raise ValueError(f"{path}: no model hyperparameters or class in the checkpoint; pass --config")
    data = _component(checkpoint.get("datamodule_hyper_parameters"), classes.get("data"))
    return ["--model", model] + (["--data", data] if data else [])


def build_run(ckpt: str | Path, config: str | None = None, overrides: Sequence[str] = ()) -> SpikelocCLI:
    """Datamodule, model and trainer as the checkpoint describes them, then ``config`` and the CLI
    ``overrides`` on top (another data root, thresholds, trainer flags). Nothing is trained or loaded:
    pass ``ckpt_path`` to the trainer. The trainer logs nothing, no config is saved and the backbone's
    ``pretrained`` file is not read (the checkpoint holds every weight) and ``compile_step`` is off
    unless ``config`` or ``overrides`` set it. Weights that do not fit the rebuilt model (another
    architecture, a wrong override) fail here with a short summary."""
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"--ckpt {ckpt}: no such file")
    checkpoint = load_checkpoint(ckpt)
    args = checkpoint_args(ckpt, checkpoint)
    if config is None and "--data" not in args:
        raise ValueError(f"{ckpt} holds no datamodule arguments (its datamodule does not call "
                         "save_hyperparameters): pass --config with a data section")
    # Compiling the step (minutes on a CPU) does not pay for an evaluation: off unless asked for again.
    args += ["--model.init_args.compile_step=false"] + (["--config", str(config)] if config else [])
    args += ["--trainer.logger=false", "--model.init_args.pretrained=null", *overrides]
    with warnings.catch_warnings():  # the tool's own argv is not the CLI's: the arguments are passed explicitly
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = SpikelocCLI(args, save_config_callback=None)
    check_architecture(checkpoint, cli.model, ckpt)
    return cli


def check_writable(path: str | Path, flag: str, folder: bool = False) -> None:
    """Fail now, naming ``flag`` and the path, where writing ``path`` (a file, or with ``folder`` a folder to
    make) would fail after the whole evaluation: a folder where the file goes (or the reverse), a file on
    the way, no permission. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{flag} {path}: is a {'file' if folder else 'folder'}; give "
                         f"{'a folder' if folder else 'a file name, e.g. ' + str(path / 'metrics.json')}")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: '{existing}' is a file, not a folder")
    target = path if path.exists() else existing
    if not os.access(target, os.W_OK):
        raise ValueError(f"{flag} {path}: '{target}' is not writable")


def summary(metrics: dict[str, float], stage: str) -> dict[str, Any]:
    """Logged ``<stage>/...`` metrics, grouped: ``per_class`` (``ap_50/<name>``), ``map_50_per_step``
    (``map_50_step<t>``), ``firing_rate`` (``firing_rate/<layer>``); the rest under their own names."""
    out: dict[str, Any] = {}
    groups: dict[str, dict] = {"per_class": {}, "map_50_per_step": {}, "firing_rate": {}}
    for key, value in metrics.items():
        name = key.removeprefix(f"{stage}/")
        if name.startswith("ap_50/"):
            groups["per_class"][name.removeprefix("ap_50/")] = value
        elif name.startswith("map_50_step"):
            groups["map_50_per_step"][int(name.removeprefix("map_50_step"))] = value
        elif name.startswith("firing_rate/"):
            groups["firing_rate"][name.removeprefix("firing_rate/")] = value
        else:
            out[name] = value
    if groups["map_50_per_step"]:
        groups["map_50_per_step"] = [value for _, value in sorted(groups["map_50_per_step"].items())]
    return {**out, **{name: group for name, group in groups.items() if group}}


def format_report(results: dict[str, Any]) -> str:
    """Readable text of :func:`summary`'s dict."""
    lines = [""]
    if "map" in results:
        lines += ["Detection, AP in percent (prediction read at the last time step)"]
        lines += [f"  {label:<20s}{100 * results[key]:6.2f}" for key, label in (
            ("map", "mAP@[.5:.95] (COCO)"), ("map_50", "mAP@0.5"), ("map_75", "mAP@0.75"),
            ("voc07", "VOC07 11-point @0.5"), ("voc_ap", "VOC all-point @0.5"))]
        lines += ["", "  AP@0.5 per class:"] + [f"    {name:<16s} {'   n/a' if ap < 0 else f'{100 * ap:6.2f}'}"
                                                for name, ap in results.get("per_class", {}).items()]
        lines += ["", "  mAP@0.5 per time step: " + "  ".join(
            f"t{t + 1}={100 * v:.1f}" for t, v in enumerate(results.get("map_50_per_step", [])))]
    for key in ("acc", "loss"):
        if key in results:
            lines.append(f"  {key:<20s}{results[key]:.4f}")
    if "mean_firing_rate" in results:
        snn, ann = results["energy_snn_mj"], results["energy_ann_mj"]
        lines += ["", f"  mean firing rate     {results['mean_firing_rate']:.4f} spikes/neuron/step",
                  f"  SynOps per sample    {results['synops']:.3e} (+ {results['macs']:.3e} MACs)",
                  f"  energy per sample    {snn:.4f} mJ (ANN: {ann:.4f} mJ, ratio {ann / max(snn, 1e-12):.1f}x)"]
    return "\n".join(lines)


def image_files(path: str | Path) -> list[Path]:
    """One image file, or every image in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    return [path]


class ImageFiles(Dataset):
    """Image files through an evaluation ``transform``: ``{"image": [3, S, S], "target": {"image_id",
    "path", "scale", "pad", "orig_size"}}`` (``image_id`` = position + 1)."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np
        from datamodules.detection.base import make_record, make_sample, read_rgb

        path = str(self.paths[index])
        sample = make_sample(read_rgb(path), make_record(index + 1, np.zeros((0, 4)), [], [], path), self.transform)
        sample["target"]["path"] = path
        return sample


def image_loader(path: str | Path, size: int, datamodule: Any = None, batch_size: int = 8) -> DataLoader:
    """Batches ``{"images": [B, 3, S, S], "targets": [...]}`` of the images at ``path`` (a file or folder),
    prepared as the datamodule's evaluation split is (letterbox or plain resize), else letterboxed to ``size``."""
    from datamodules.detection.base import collate_detection
    from datamodules.detection.transforms import eval_transform
    from datamodules.detection.validation import readable_images

    transform = datamodule.eval_transform() if hasattr(datamodule, "eval_transform") else eval_transform(size)
    files = readable_images(image_files(path))  # an unreadable image is skipped with a warning
    return DataLoader(ImageFiles(files, transform), batch_size=batch_size, collate_fn=collate_detection)
