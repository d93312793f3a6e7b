"""Detect objects in image files: ``python tools/predict.py --ckpt P --input IMG_OR_DIR --out DIR [--config C]``.

Each image is prepared as the datamodule's evaluation split (letterbox or plain resize) and shown to
the network for its T time steps (``trainer.predict``); the last step's boxes, labels and scores are
drawn into ``DIR/<name>.png`` and written to ``DIR/detections.json`` (COCO results format). Extra
``--key value`` arguments override the checkpoint's settings (``--model.init_args.conf_threshold 0.1``).
``--stream REC.dat`` instead runs an event recording window by window with the state carried across
windows (constant memory): ``DIR/detections.jsonl`` and one annotated ``window_<i>.png`` per window
(a detector trained on events; a file without the ``%`` header only with ``--headerless``).
"""
import argparse

from spikeloc.checkpoints import load_checkpoint
from spikeloc.evaluate import build_run, image_loader
from spikeloc.streaming import save_stream, stream_detect
from spikeloc.training.writers import DetectionWriter


def stream(cli, args, parser: argparse.ArgumentParser) -> None:
    """``--stream``: a Prophesee ``.dat`` recording, ``--window`` frames of ``--frame_us`` each per window;
    the detector and the file are checked before anything is written."""
    from datamodules.gen1 import iter_dat_frames

    channels = cli.model.hparams.get("in_channels")
    if channels != 2:
        parser.error(f"--stream {args.stream}: a recording becomes 2-channel event frames (ON/OFF), but this "
                     f"detector takes {channels}-channel input (images): give images with --input, or the "
                     "checkpoint of a detector trained on events")
    try:
        frames = iter_dat_frames(args.stream, args.frame_us, image_size=cli.model.image_size,
                                 headerless=args.headerless)
    except (OSError, ValueError) as err:
        parser.error(f"--stream: {err}")
    cli.model.load_state_dict(load_checkpoint(args.ckpt)["state_dict"])
    window = args.window or getattr(cli.datamodule, "num_steps", None) or cli.model.num_steps  # T of training
    results = stream_detect(cli.model, frames, window)
    print(f"detections per window -> {save_stream(results, args.out, cli.model.class_names, args.score)}")


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
    parser.add_argument("--window", type=int, default=None, help="--stream: frames per window (default: the T it was trained with)")
    parser.add_argument("--frame_us", type=int, default=50_000, help="--stream: microseconds of events per frame")
    parser.add_argument("--headerless", action="store_true",
                        help="--stream: a legacy .dat without '%%' header lines (CD events from byte 0)")
    args, overrides = parser.parse_known_args()
    cli = build_run(args.ckpt, args.config, overrides)
    if args.stream:
        return stream(cli, args, parser)
    writer = DetectionWriter(args.out, cli.model.class_names, args.score)
    cli.trainer.callbacks.append(writer)
    loader = image_loader(args.input, cli.model.image_size, cli.datamodule, args.batch_size)
    cli.trainer.predict(cli.model, loader, ckpt_path=args.ckpt, return_predictions=False, weights_only=True)
    for path, drawn, picture in writer.pictures:
        print(f"{path}: {drawn} detections -> {picture}")


if __name__ == "__main__":
    main()
