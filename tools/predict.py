"""Detect objects in image files: ``python tools/predict.py --ckpt P --input IMG_OR_DIR --out DIR [--config C]``.

Each image is prepared as the datamodule's evaluation split (letterbox or plain resize) and shown to
the network for its T time steps (``trainer.predict``); the last step's boxes, labels and scores are
drawn into ``DIR/<name>.png`` and written to ``DIR/detections.json`` (COCO results format). Extra
``--key value`` arguments override the checkpoint's settings (``--model.init_args.conf_threshold 0.1``).
``--stream REC.dat`` instead runs an event recording window by window with the state carried across
windows (constant memory): ``DIR/detections.jsonl`` and one annotated ``window_<i>.png`` per window
(a detector trained on events; a file without the ``%`` header only with ``--headerless``). The recording
and the checkpoint are all it needs: the detector is rebuilt from the checkpoint without its datamodule
(the training data need not exist), and the frames are made as in training (frame length, T per window,
input size and count clipping from the checkpoint's datamodule settings); ``--config`` and
``--model.init_args.*`` / ``--data.init_args.*`` override those settings, ``--frame_us`` / ``--window`` the
frame length and T.
"""
import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml

from spikeloc.checkpoints import CheckpointError, check_architecture, load_checkpoint
from spikeloc.evaluate import build_run, image_loader
from spikeloc.streaming import save_stream, stream_detect
from spikeloc.training.writers import DetectionWriter

SECTIONS = ("model", "data")  # what --stream takes from --config and --<section>.init_args.<key> <value>


def stream_settings(config: str | None, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "data": {...}}``: the ``init_args`` (and a model ``class_path``) of ``config``, then
    ``--model.init_args.<key> <value>`` / ``--data.init_args.<key> <value>`` overrides (``=<value>`` too; YAML
    values); ``--trainer.*`` is accepted and unused (no trainer streams)."""
    settings: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    if config:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
        for section in SECTIONS:
            part = loaded.get(section) or {}
            settings[section].update(part.get("init_args") or {})
            if section == "model" and part.get("class_path"):
                settings[section]["_class_path"] = part["class_path"]
    words = [part for word in overrides for part in word.split("=", 1)]
    keys = [key.removeprefix("--").split(".", 2) for key in words[::2]]
    if len(words) % 2 or any(key[0] != "trainer" and (len(key) < 3 or key[0] not in SECTIONS or key[1] != "init_args")
                             for key in keys):
        raise ValueError("--stream takes --model.init_args.<key> <value> and --data.init_args.<key> <value> "
                         f"overrides, got {' '.join(overrides)}")
    for key, value in zip(keys, words[1::2]):
        if key[0] != "trainer":
            settings[key[0]][key[2]] = yaml.safe_load(value)
    return settings


def detector_from_checkpoint(ckpt: str, settings: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """The detector of ``ckpt`` built from its own hyperparameters with ``settings["model"]`` on top (no datamodule,
    no data read), its weights loaded; and the checkpoint's datamodule hyperparameters with ``settings["data"]``."""
    checkpoint = load_checkpoint(ckpt)
    model_settings = dict(settings["model"])
    class_path = model_settings.pop("_class_path", None) or (checkpoint.get("class_paths") or {}).get("model")
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if not class_path or not hparams:
        raise CheckpointError(f"{ckpt}: no model class or hyperparameters in the checkpoint (not written by "
                              "tools/train.py?): --stream rebuilds the detector from them")
    module, _, name = class_path.rpartition(".")
    model = getattr(importlib.import_module(module), name)(**{**hparams, "compile_step": False, **model_settings})
    check_architecture(checkpoint, model, ckpt)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), {**(checkpoint.get("datamodule_hyper_parameters") or {}), **settings["data"]}


def stream(model: Any, data: dict[str, Any], args, parser: argparse.ArgumentParser) -> None:
    """``--stream``: a Prophesee ``.dat`` recording in windows of T frames, each frame as the detector was trained
    (``data``: its datamodule's hyperparameters); the detector and the file are checked before anything is written."""
    from datamodules.events.gen1 import iter_dat_frames

    channels = model.hparams.get("in_channels")
    if channels != 2:
        parser.error(f"--stream {args.stream}: a recording becomes 2-channel event frames (ON/OFF), but this "
                     f"detector takes {channels}-channel input (images): give images with --input, or the "
                     "checkpoint of a detector trained on events")
    frame_us = args.frame_us or data.get("window_us") or 50_000
    window = args.window or data.get("num_steps") or model.num_steps  # T of training
    size, clip = data.get("image_size") or model.image_size, data.get("clip_count")
    try:
        frames = iter_dat_frames(args.stream, frame_us, image_size=size, clip_count=clip, headerless=args.headerless)
    except (OSError, ValueError) as err:
        parser.error(f"--stream: {err}")
    print(f"--stream: frames of {frame_us} us, {window} per window, {size} px, counts clipped at {clip}")
    results = stream_detect(model, frames, window)
    print(f"detections per window -> {save_stream(results, args.out, model.class_names, args.score)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) of a detector")
    parser.add_argument("--config", default=None, help="a YAML overriding what the checkpoint says")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image file or a folder of images")
    source.add_argument("--stream", help="a Prophesee .dat event recording, run window by window")
    parser.add_argument("--out", required=True, help="folder for the annotated PNGs and detections.json")
    parser.add_argument("--score", type=float, default=0.25, help="draw detections with at least this score")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--window", type=int, default=None,
                        help="--stream: frames per window (default: the T it was trained with)")
    parser.add_argument("--frame_us", type=int, default=None,
                        help="--stream: microseconds of events per frame (default: as trained, else 50000)")
    parser.add_argument("--headerless", action="store_true",
                        help="--stream: a legacy .dat without '%%' header lines (CD events from byte 0)")
    args, overrides = parser.parse_known_args()
    if args.stream:
        try:
            model, data = detector_from_checkpoint(args.ckpt, stream_settings(args.config, overrides))
        except (CheckpointError, OSError, ValueError, TypeError) as err:
            parser.error(f"--stream: {err}")
        return stream(model, data, args, parser)
    cli = build_run(args.ckpt, args.config, overrides)
    writer = DetectionWriter(args.out, cli.model.class_names, args.score)
    cli.trainer.callbacks.append(writer)
    loader = image_loader(args.input, cli.model.image_size, cli.datamodule, args.batch_size)
    cli.trainer.predict(cli.model, loader, ckpt_path=args.ckpt, return_predictions=False, weights_only=True)
    for path, drawn, picture in writer.pictures:
        print(f"{path}: {drawn} detections -> {picture}")


if __name__ == "__main__":
    main()
