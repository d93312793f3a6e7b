"""Evaluate a trained model: ``python tools/eval.py --ckpt P [--config C] [--split val|test] [--json OUT] [--out DIR]``.

The checkpoint rebuilds the model and its datamodule; ``--config`` and extra ``--key value`` arguments
override them (another data root, thresholds, trainer flags). Runs ``trainer.validate`` / ``test`` and
prints what the module logged: for a detector mAP (COCO, @0.5, @0.75, VOC07), AP per class, mAP@0.5 per
time step, firing rates and energy. A detector also gets the COCO results file, ``map_vs_step.png`` and
annotated images in ``--out`` (default ``<checkpoint folder>/eval_<split>``).
"""
import argparse
import json
from pathlib import Path

from spikeloc.evaluate import build_run, check_writable, format_report, summary
from spikeloc.training import SpikingDetector
from spikeloc.training.writers import EvaluationWriter
from spikeloc.visualize import plot_map_vs_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--config", default=None, help="a YAML overriding what the checkpoint says")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--json", default=None, help="write the metrics as JSON here")
    parser.add_argument("--out", default=None, help="folder for results, plot and images")
    parser.add_argument("--images", type=int, default=4, help="annotated images to save")
    args, overrides = parser.parse_known_args()
    for flag, path in (("--json", args.json), ("--out", args.out)):
        try:  # before the evaluation, not after it
            if path:
                check_writable(path, flag, folder=flag == "--out")
        except ValueError as err:
            parser.error(str(err))
    cli = build_run(args.ckpt, args.config, overrides)
    out_dir = Path(args.out) if args.out else Path(args.ckpt).parent / f"eval_{args.split}"
    detector = isinstance(cli.model, SpikingDetector)
    if detector:
        cli.trainer.callbacks.append(EvaluationWriter(out_dir, args.images))
    run = cli.trainer.validate if args.split == "val" else cli.trainer.test
    metrics = run(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt, verbose=False, weights_only=True)[0]
    if not cli.trainer.is_global_zero:
        return
    results = summary(metrics, args.split)
    print(format_report(results))
    if detector:
        plot_map_vs_step(results["map_50_per_step"], out_dir / "map_vs_step.png")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {out_dir if detector else args.json}")


if __name__ == "__main__":
    main()
