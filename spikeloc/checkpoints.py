"""Checkpoint files: read them with clear errors, compare them with a model, find a run's newest.

- :func:`load_checkpoint` / :func:`read_checkpoint`: ``torch.load(weights_only=True)`` that names
  the file and what is wrong (missing, a folder, empty, truncated, not a checkpoint, no weights); an
  older checkpoint's class paths and options come back in today's names (:func:`upgrade`).
- :func:`check_architecture`: a checkpoint's weights against a model, summarised (how many keys
  missing / unexpected / of another shape, the first few) with the saved config that would fit.
- :func:`resolve_last`: ``--ckpt_path last`` -> the newest readable checkpoint of the run, and the
  run's folder kept, so a resumed run goes on writing where it stopped (any other path is checked
  with :func:`check_checkpoint_file` before anything is built).
- :func:`claim_version`: a new run's ``version_N`` folder made with an exclusive create.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from jsonargparse import Namespace

FIRST_FEW = 5  # keys named in a summary
MOVED = {  # datamodules/ by kind: an older checkpoint's module -> where it lives now
    "datamodules.detection": "datamodules.detection.base", "datamodules.voc": "datamodules.detection.voc",
    "datamodules.coco": "datamodules.detection.coco", "datamodules.shapes": "datamodules.detection.shapes",
    "datamodules.glyphs": "datamodules.detection.glyphs", "datamodules.transforms": "datamodules.detection.transforms",
    "datamodules.mosaic": "datamodules.detection.mosaic", "datamodules.validation": "datamodules.detection.validation",
    "datamodules.events": "datamodules.events.classification", "datamodules.dat": "datamodules.events.dat",
    "datamodules.frames": "datamodules.events.frames", "datamodules.gen1": "datamodules.events.gen1",
    "datamodules.moving_shapes": "datamodules.events.moving_shapes", "datamodules.ncaltech": "datamodules.events.ncaltech",
    "datamodules.streams": "datamodules.events.streams", "datamodules.procedural": "datamodules.classification.procedural",
    "datamodules.vision": "datamodules.classification.vision", "datamodules.add_task": "datamodules.sequences.add_task",
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint holding objects other than tensors and plain values (refused by ``weights_only``)."""


def check_checkpoint_file(path: str | Path) -> Path:
    """Cheap checks that need no loading: the file exists, is not empty and is a whole zip archive.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a folder; give the .ckpt file inside it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): the run writing it was probably killed; "
                              "use an older checkpoint of the run")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint '{path}' is truncated or not a PyTorch checkpoint "
                              f"({path.stat().st_size} bytes, no zip archive)")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict saved in ``path`` (a Lightning ``.ckpt``, a ``state_dict`` or a timm file), read with
    ``weights_only=True`` (no code from the file runs); the one place where spikeloc calls ``torch.load``.

    Raises:
        CheckpointError: the file is missing, a folder, empty, truncated, damaged or not a dict.
    """
    path = check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"checkpoint '{path}' holds objects other than tensors and plain values; "
                                    "spikeloc reads checkpoints with weights_only=True and runs no code from "
                                    f"them ({str(err).splitlines()[0]})") from err
    except Exception as err:  # torch raises many types for damaged archives
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'damaged file'}") from err
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, not a dict of weights")
    return upgrade(dict(checkpoint))


def _moved(class_path: Any) -> Any:
    """``class_path`` with its module as :data:`MOVED` says (anything else as it is)."""
    if not isinstance(class_path, str):
        return class_path
    module, _, name = class_path.rpartition(".")
    return f"{MOVED[module]}.{name}" if module in MOVED else class_path


def _neuron_backend(kwargs: Any) -> None:
    """The neuron flags before ``backend`` (``native``, ``compile``, ``fused``) in ``kwargs`` as the ``backend``
    that runs the same maths: ``native`` -> ``auto`` (the CPU kernels where they run, as ``native`` did, fused
    elsewhere), ``compile`` -> ``compiled``, ``fused`` -> ``fused``, all false -> ``eager``."""
    if not isinstance(kwargs, dict) or not {"native", "compile", "fused"} & set(kwargs):
        return
    native, compile, fused = (bool(kwargs.pop(key, False)) for key in ("native", "compile", "fused"))
    kwargs.setdefault("backend", "auto" if native else "compiled" if compile else "fused" if fused else "eager")


def _fptt_backend(fptt: Any) -> None:
    """``fptt.native`` / ``fptt.compile`` as ``fptt.backend``: native true -> ``cpu_kernels``, unset -> ``auto``
    (it followed the cells), false -> ``eager``; the compiled update is gone (the one update runs the same maths)."""
    if not isinstance(fptt, dict) or not {"native", "compile"} & set(fptt):
        return
    native = fptt.pop("native", None)
    fptt.pop("compile", None)
    fptt.setdefault("backend", "cpu_kernels" if native else "auto" if native is None else "eager")


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` (in place) with today's names for what older versions wrote: the class paths of
    datamodules that moved (:data:`MOVED`), and the neuron and FPTT flags that ``backend`` replaced in the model's
    hyperparameters (``backbone_kwargs`` / ``model_kwargs``, ``neck_kwargs.neuron_kwargs``, ``fptt``)."""
    paths = checkpoint.get("class_paths")
    if isinstance(paths, dict):
        checkpoint["class_paths"] = {key: _moved(value) for key, value in paths.items()}
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if isinstance(checkpoint.get(key), Mapping) and "_class_path" in checkpoint[key]:
            checkpoint[key]["_class_path"] = _moved(checkpoint[key]["_class_path"])
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, Mapping):
        _neuron_backend(hparams.get("backbone_kwargs"))
        _neuron_backend(hparams.get("model_kwargs"))
        neck = hparams.get("neck_kwargs")
        _neuron_backend(neck.get("neuron_kwargs") if isinstance(neck, dict) else None)
        _fptt_backend(hparams.get("fptt"))
    _fptt_backend(checkpoint.get("fptt_config"))
    return checkpoint


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` for files that must hold weights: a ``state_dict`` entry or only tensors.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, or no weights in the file.
    """
    checkpoint = load_checkpoint(path, map_location)
    if "state_dict" not in checkpoint and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"checkpoint '{path}' has no 'state_dict' (keys: {sorted(checkpoint)[:FIRST_FEW]})")
    return checkpoint


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys) - FIRST_FEW} more)" if len(keys) > FIRST_FEW else ""
    return ", ".join(keys[:FIRST_FEW]) + more


def check_architecture(checkpoint: Mapping[str, Any], model: torch.nn.Module, path: str | Path = "checkpoint") -> None:
    """Fail with a short summary when ``checkpoint``'s weights do not fit ``model`` exactly.

    Raises:
        CheckpointError: counts of missing / unexpected / other-shape keys, the first few of each,
            and the model arguments saved in the checkpoint (the config that would fit).
    """
    saved = checkpoint.get("state_dict", checkpoint)
    mine = model.state_dict()
    missing = sorted(set(mine) - set(saved))
    unexpected = sorted(set(saved) - set(mine))
    shapes = sorted(k for k in set(mine) & set(saved) if tuple(mine[k].shape) != tuple(saved[k].shape))
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint '{path}' does not fit this model ({len(mine)} tensors in the model, {len(saved)} saved):"]
    if missing:
        lines.append(f"  {len(missing)} missing from the checkpoint: {_first(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected in the checkpoint: {_first(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} of another shape: " + _first(
            [f"{k} {tuple(saved[k].shape)} vs {tuple(mine[k].shape)}" for k in shapes]))
    lines.append(_fitting_config(checkpoint, Path(path)))
    raise CheckpointError("\n".join(lines))


def _fitting_config(checkpoint: Mapping[str, Any], path: Path) -> str:
    """Where the configuration that fits the checkpoint is: its saved model arguments and its run's config.yaml."""
    hparams = checkpoint.get("hyper_parameters")
    lines = []
    if hparams:
        fit = {k: v for k, v in hparams.items() if not callable(v) and not str(k).startswith("_")}
        lines.append("The checkpoint was trained with these model arguments (use them in model.init_args):\n"
                     + yaml.safe_dump(_plain(fit), sort_keys=True, default_flow_style=None).rstrip())
    config = next((folder / "config.yaml" for folder in (path.parent, path.parent.parent)
                   if (folder / "config.yaml").is_file()), None)
    if config is not None:
        lines.append(f"The run that wrote it was configured by {config}: pass --config {config}")
    return "\n".join(lines) or "No configuration was saved with it: use the config of the run that wrote it."


def _plain(value: Any) -> Any:
    """Hyper-parameters as YAML-safe builtins (dataclasses and other objects become their repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return dict(vars(value)) if hasattr(value, "__dataclass_fields__") else repr(value)


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The most recently written readable-looking ``*.ckpt`` in ``folder`` (truncated files skipped)."""
    files = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((f for f in files if f.stat().st_size and zipfile.is_zipfile(f)), None)


def _version(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1]) if folder.name.split("_", 1)[-1].isdigit() else -1


def _logger_args(config: Any) -> Namespace:
    """``init_args`` of the run's (first) logger; Lightning's default one (``logger`` true or unset) made
    explicit, so that its version can be pinned."""
    logger = config.trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    if not hasattr(logger, "get"):
        root = str(config.trainer.get("default_root_dir") or ".")
        logger = config.trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(save_dir=root, name="lightning_logs", version=None))
    return logger.init_args


def _versions_folder(init: Namespace, root: Path) -> Path:
    """``<save_dir>/<name>``, where a CSV or TensorBoard logger keeps its ``version_N`` folders."""
    return Path(init.get("save_dir") or root) / (init.get("name") or "")


def claim_version(config: Any) -> Path | None:
    """Make the run's ``version_N`` folder now and pin the logger to N (``config``: the CLI's namespace
    before anything is built). ``os.mkdir`` either creates the folder or fails, so two runs started at
    once in one ``save_dir`` cannot both take ``version_N`` (Lightning picks N when it first writes).

    Returns the folder made; None where nothing is claimed: no logger, a logger already pinned to a
    version (``--ckpt_path last``), one other than CSV / TensorBoard, or a remote ``save_dir``.
    """
    logger = config.trainer.get("logger")
    if logger is False or isinstance(logger, list) and not logger:
        return None
    init = _logger_args(config)
    first = config.trainer.logger[0] if isinstance(config.trainer.logger, list) else config.trainer.logger
    kind = str(first.get("class_path", "")).rsplit(".", 1)[-1]
    base = _versions_folder(init, Path(config.trainer.get("default_root_dir") or "."))
    if init.get("version") is not None or kind not in ("CSVLogger", "TensorBoardLogger") or "://" in str(base):
        return None
    base.mkdir(parents=True, exist_ok=True)
    version = max((_version(folder) for folder in base.glob("version_*")), default=-1) + 1
    while True:
        try:
            os.mkdir(base / f"version_{version}")
        except FileExistsError:  # another run took it meanwhile
            version += 1
            continue
        init.version = version
        return base / f"version_{version}"


def resolve_last(config: Any) -> None:
    """``ckpt_path: last`` -> the newest checkpoint of the run (in place), keeping the run's folder.

    ``config`` is the CLI's namespace before anything is built. With a CSV/TensorBoard logger the
    newest ``version_N`` holding a checkpoint is chosen and the logger is pinned to ``version: N``;
    a previous ``metrics.csv`` there is kept as ``metrics.<k>.csv`` (Lightning would delete it).

    Raises:
        CheckpointError: no checkpoint of the run exists (the message names where it looked).
    """
    if config.get("ckpt_path") != "last":
        if config.get("ckpt_path"):
            check_checkpoint_file(config.ckpt_path)
        return
    root = Path(config.trainer.get("default_root_dir") or ".")
    logger = config.trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    dirpath = config.get("checkpoint") and config.checkpoint.get("dirpath")
    init = None
    if dirpath:
        places = [Path(dirpath)]
    elif logger is False:
        places = [root / "checkpoints"]
    else:
        init = _logger_args(config)
        base = _versions_folder(init, root)
        places = sorted((d / "checkpoints" for d in base.glob("version_*")), key=lambda d: -_version(d.parent))
        places = places or [base / "version_*" / "checkpoints"]
    found = next(((place, ckpt) for place in places if place.is_dir() and (ckpt := newest_checkpoint(place))), None)
    if found is None:
        raise CheckpointError(f"--ckpt_path last: no checkpoint of this run under {', '.join(map(str, places))} "
                              "(a run that never saved one cannot be resumed; drop --ckpt_path to start afresh)")
    place, config.ckpt_path = found[0], str(found[1])
    if init is not None:
        init.version = _version(place.parent)
        metrics = place.parent / "metrics.csv"
        if metrics.is_file():
            k = 1 + sum(1 for _ in place.parent.glob("metrics.*.csv"))
            metrics.rename(place.parent / f"metrics.{k}.csv")

