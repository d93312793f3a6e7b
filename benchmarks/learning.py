"""The learning suite: does a detector recipe learn data it was not tuned on? (docs/learning.md)

Trains a config (default ``configs/quickstart_detect.yaml``: its model, optimizer and phase split) on
each set of :mod:`learning_sets` through the COCO datamodule, the way a user trains their own data,
at the same number of optimizer batches for every variant (1520 by default). The event sets of
:mod:`event_sets` (``--sets silhouettes street``) are read through ``datamodules.events.gen1.GEN1DataModule``
(128 px, T = 4 frames of 50 ms) and trained with ``configs/quickstart_events.yaml`` for 300 batches by
default. The variants:

- ``twin``: the ANN twin alone (``neuron: ann``, T = 1) for the whole budget: the control;
- ``snn``: the SNN from scratch for the whole budget;
- ``recipe``: the config as it is (twin phase, then the SNN from the twin's weights).

With ``--carried`` an event set is trained and validated as consecutive windows with the state carried
from batch to batch (``StreamingDetector`` on GEN1's sequential batches; one label in four is a
window's at 50 ms labels), at the same number of batches.

Each run is ``tools/train.py`` in a subprocess, validated every epoch; the table gives mAP@0.5 and
@0.75 at the end, for ``recipe`` also the twin's mAP@0.5 at the switch and the SNN's after its first
spiking epoch, the ratio to the twin, and the wall time. ``--set key=value`` adds command-line
overrides to every run (what an experiment changes).

Usage::

    python benchmarks/learning.py                              # every image set, twin + recipe
    python benchmarks/learning.py --variants twin snn recipe --json
    python benchmarks/learning.py --sets pip_tiles --set model.init_args.loss_kwargs.box_weight=2
    python benchmarks/learning.py --sets silhouettes street --variants snn
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import event_sets  # noqa: E402
import learning_sets  # noqa: E402
from datamodules.events.gen1 import index_recordings, index_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SETS, EVENT_SETS = sorted(learning_sets.SETS), sorted(event_sets.SETS)
# (config, optimizer batches) a set kind trains with unless --config / --batches say otherwise
DEFAULTS = {"images": (ROOT / "configs/quickstart_detect.yaml", 1520),
            "events": (ROOT / "configs/quickstart_events.yaml", 300)}
VARIANTS = {
    "twin": ["--model.init_args.neuron", "ann", "--model.init_args.num_steps", "1",
             "--model.init_args.twin_fraction", "0"],
    "snn": ["--model.init_args.twin_fraction", "0"],
    "recipe": [],
}
# --carried: an event set's recordings as consecutive windows, the state carried from batch to batch
CARRIED = ["--model.class_path", "spikeloc.training.carry.StreamingDetector", "--data.init_args.sequential", "true"]


def kind(name: str) -> str:
    return "events" if name in event_sets.SETS else "images"


def data_config(name: str, folder: Path, batch_size: int) -> str:
    """The datamodule of a suite set: the COCO reader with its defaults, as a user would point it, or for an
    event set the GEN1 reader at 128 px with T = 4 frames of 50 ms, without augmentation (``--set
    data.init_args.hflip=0.5`` adds it to independent windows)."""
    if kind(name) == "events":
        return json.dumps({"class_path": "datamodules.events.gen1.GEN1DataModule", "init_args": {
            "root": str(folder), "image_size": 128, "num_steps": 4, "window_us": 50_000, "batch_size": batch_size,
            "num_workers": 1, "hflip": 0.0, "zoom": None, "translate": 0.0}})  # not the config's augmentation
    return json.dumps({"class_path": "datamodules.detection.coco.COCODetectionDataModule", "init_args": {
        "root": str(folder), "train_ann": "annotations/instances_train.json", "train_images": "train",
        "val_ann": "annotations/instances_val.json", "val_images": "val", "image_size": learning_sets.SIZE,
        "batch_size": batch_size, "num_workers": 1}})


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Validation rows of a run's ``metrics.csv`` (one per validated epoch), as floats."""
    rows = []
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/map_50"):
                rows.append({k: float(v) for k, v in row.items() if v})
    return rows


def run(name: str, variant: str, args: argparse.Namespace) -> dict:
    """Train one (set, variant) and summarise its validation curve."""
    if kind(name) == "events":
        folder = event_sets.write_set(name, args.data)
        if args.carried:  # batches of consecutive windows of T = 4 frames of 50 ms
            num_train = sum(r.windows for r in index_recordings(folder / "train", 4 * 50_000, 50_000))
        else:
            num_train = len(index_split(folder / "train"))  # labelled samples left by GEN1's box filter
    else:
        folder, num_train = learning_sets.write_set(name, args.data), learning_sets.SETS[name].num_train
    default_config, default_batches = DEFAULTS[kind(name)]
    config, batches = args.config or default_config, args.batches or default_batches
    per_epoch = math.ceil(num_train / args.batch_size)
    epochs = max(1, round(batches / per_epoch))
    variant_args = [*VARIANTS[variant], *(CARRIED if args.carried else [])]
    variant = f"{variant}+carried" if args.carried else variant
    tag = f"{name}-{variant}{args.tag}"
    command = [sys.executable, str(ROOT / "tools/train.py"), "--config", str(config),
               "--data", data_config(name, folder, args.batch_size), "--trainer.max_epochs", str(epochs),
               "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(args.out), "--trainer.logger.init_args.name", tag,
               "--seed_everything", str(args.seed), *variant_args]
    for item in args.set:
        key, _, value = item.partition("=")
        command += [f"--{key}", value]
    start = time.perf_counter()
    log = args.out / f"{tag}.log"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"set": name, "variant": variant, "error": f"exit {done.returncode}, see {log}"}
    run_dir = max((args.out / tag).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    rows = read_metrics(run_dir)
    curve = [round(r["val/map_50"], 4) for r in rows]
    result = {"set": name, "variant": variant, "batches": epochs * per_epoch, "epochs": epochs,
              "map_50": curve[-1], "map_75": round(rows[-1]["val/map_75"], 4), "seconds": round(seconds),
              "curve": curve, "run": str(run_dir)}
    switch = twin_epochs_of(log)
    if switch and 0 < switch < len(curve):
        result.update(twin_at_switch=curve[switch - 1], snn_first_epoch=curve[switch])
    return result


def twin_epochs_of(log: Path) -> int | None:
    """The twin phase's length in epochs, as the run logged it."""
    for line in log.read_text().splitlines():
        if "twin phase:" in line and "epochs" in line:
            return int(line.split("twin phase:")[1].split()[0])
    return None


def table(results: list[dict]) -> str:
    """Markdown table; ``ratio`` is each run's mAP@0.5 over its set's twin."""
    twin = {r["set"]: r["map_50"] for r in results if r["variant"] == "twin" and "map_50" in r}
    lines = ["| set | variant | batches | mAP@0.5 | mAP@0.75 | / twin | twin at switch -> SNN 1st epoch | time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['variant']} | - | {r['error']} | | | | |")
            continue
        ratio = f"{r['map_50'] / twin[r['set']]:.2f}" if twin.get(r["set"]) else "-"
        switch = (f"{r['twin_at_switch']:.3f} -> {r['snn_first_epoch']:.3f}" if "twin_at_switch" in r else "-")
        lines.append(f"| {r['set']} | {r['variant']} | {r['batches']} | {r['map_50']:.3f} | {r['map_75']:.3f} | "
                     f"{ratio} | {switch} | {r['seconds'] // 60} min {r['seconds'] % 60:02d} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="default: configs/quickstart_detect.yaml (image sets), configs/quickstart_events.yaml "
                        "(event sets)")
    parser.add_argument("--sets", nargs="+", default=IMAGE_SETS, choices=IMAGE_SETS + EVENT_SETS,
                        help=f"default: the image sets; the event sets are {', '.join(EVENT_SETS)}")
    parser.add_argument("--variants", nargs="+", default=["twin", "recipe"], choices=list(VARIANTS))
    parser.add_argument("--batches", type=int, default=None,
                        help="optimizer batches per run (default 1520 on image sets, 300 on event sets)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a command-line override for every run, e.g. model.init_args.num_steps=3")
    parser.add_argument("--tag", default="", help="suffix of the run names (keeps experiments apart)")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/learning_sets", help="where the sets are written")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/learning")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per run")
    parser.add_argument("--carried", action="store_true",
                        help="event sets: train and validate on consecutive windows with the state carried "
                             "(StreamingDetector, GEN1 sequential batches) at the same number of batches")
    args = parser.parse_args()
    if args.carried and any(kind(name) != "events" for name in args.sets):
        parser.error(f"--carried applies to the event sets ({', '.join(EVENT_SETS)}) only")
    results = []
    for name in args.sets:
        for variant in args.variants:
            results.append(run(name, variant, args))
            if args.json:
                print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
