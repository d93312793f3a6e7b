"""Detect objects in image files: ``python tools/predict.py --ckpt P --input IMG_OR_DIR --out DIR [--config C]``.

Each image is prepared as the datamodule's evaluation split (letterbox or plain resize) and shown to
the network for its T time steps (``trainer.predict``); the last step's boxes, labels and scores are
drawn into ``DIR/<name>.png`` and written to ``DIR/detections.json`` (COCO results format). Extra
``--key value`` arguments override the checkpoint's settings (``--model.init_args.conf_threshold 0.1``).
"""
import argparse

from spikeloc.evaluate import build_run, image_loader
from spikeloc.training.writers import DetectionWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) of a detector")
    parser.add_argument("--config", default=None, help="a YAML overriding what the checkpoint says")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for the annotated PNGs and detections.json")
    parser.add_argument("--score", type=float, default=0.25, help="draw detections with at least this score")
    parser.add_argument("--batch_size", type=int, default=8)
    args, overrides = parser.parse_known_args()
    cli = build_run(args.ckpt, args.config, overrides)
    writer = DetectionWriter(args.out, cli.model.class_names, args.score)
    cli.trainer.callbacks.append(writer)
    loader = image_loader(args.input, cli.model.image_size, cli.datamodule, args.batch_size)
    cli.trainer.predict(cli.model, loader, ckpt_path=args.ckpt, return_predictions=False, weights_only=True)
    for path, drawn, picture in writer.pictures:
        print(f"{path}: {drawn} detections -> {picture}")


if __name__ == "__main__":
    main()
