"""Evaluate a trained detector: ``python tools/eval.py --config C --ckpt P [--split val|test] [--json OUT] [--out DIR]``.

Builds datamodule + model from the training YAML, loads the checkpoint, runs the split and prints
mAP (COCO, @0.5, @0.75, VOC07), per-class AP, mAP@0.5 per time step, firing rates and energy.
Writes the COCO results file, ``map_vs_step.png`` and a few annotated images into ``--out``
(default: ``<checkpoint folder>/eval_<split>``); ``--json`` also writes the numbers as JSON.
Extra ``--key value`` arguments override the config, as for ``tools/train.py``.
"""
import argparse
from pathlib import Path

from spikeloc.evaluate import build_detector_run, format_report, load_weights, run_split, save_outputs, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the YAML the model was trained with")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--json", default=None, help="write the metrics as JSON here")
    parser.add_argument("--out", default=None, help="folder for results, plot and images")
    parser.add_argument("--images", type=int, default=4, help="annotated images to save")
    args, overrides = parser.parse_known_args()
    if not Path(args.ckpt).is_file():
        parser.error(f"--ckpt {args.ckpt}: no such file")
    cli = build_detector_run(args.config, overrides)
    load_weights(cli.model, args.ckpt)
    module = run_split(cli, args.split)
    if not cli.trainer.is_global_zero:
        return
    out_dir = Path(args.out) if args.out else Path(args.ckpt).parent / f"eval_{args.split}"
    print(format_report(summary(module)))
    written = save_outputs(module, cli.datamodule, args.split, out_dir, args.json, args.images)
    print(f"\nwritten to {out_dir}: " + ", ".join(
        str(Path(p).name) for key, p in written.items() if p is not None and key != "images")
          + f", {len(written['images'])} annotated images")


if __name__ == "__main__":
    main()
