"""Detect objects in image files: ``python tools/predict.py --config C --ckpt P --input IMG_OR_DIR --out DIR``.

Each image is letterboxed like the evaluation transform, shown to the network for its T time
steps, and drawn with the last step's boxes, labels and scores into ``DIR/<name>.png``.
"""
import argparse
from pathlib import Path

from spikeloc.evaluate import build_detector_run, image_files, load_weights, predict_files
from spikeloc.visualize import draw_detections, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the YAML the model was trained with")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="folder for the annotated PNGs")
    parser.add_argument("--score", type=float, default=0.25, help="draw detections with at least this score")
    args, overrides = parser.parse_known_args()
    paths = image_files(args.input)
    cli = build_detector_run(args.config, overrides)
    load_weights(cli.model, args.ckpt)
    size = getattr(cli.datamodule, "image_size", cli.model.image_size)
    names = getattr(cli.datamodule, "class_names", None) or [f"class_{k}" for k in range(cli.model.num_classes)]
    for path, source, detections in predict_files(cli.model, paths, size):
        kept = int((detections["scores"] >= args.score).sum())
        picture = draw_detections(source, detections, names, score_threshold=args.score)
        written = save_png(picture, Path(args.out) / f"{path.stem}.png")
        print(f"{path}: {kept} detections -> {written}")


if __name__ == "__main__":
    main()
