"""Evaluation and prediction helpers for trained detectors (the logic behind ``tools/eval.py`` and
``tools/predict.py``): build the run from its YAML, load a checkpoint, run a split, report, draw."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from spikeloc.cli import SpikelocCLI
from spikeloc.training.detection import SpikingDetector
from spikeloc.visualize import draw_detections, plot_map_vs_step, save_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_detector_run(config: str, overrides: Sequence[str] = ()) -> SpikelocCLI:
    """The datamodule, model and trainer of ``config`` (plus CLI ``overrides``), nothing trained.

    The trainer logs nothing and no config is saved; the backbone's ``pretrained`` file is not
    read again (the checkpoint holds every weight).
    """
    args = ["--config", str(config), "--trainer.logger=false", "--model.init_args.pretrained=null", *overrides]
    with warnings.catch_warnings():  # the tool's own argv is not the CLI's: the arguments are passed explicitly
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = SpikelocCLI(args, save_config_callback=None)
    if not isinstance(cli.model, SpikingDetector):
        raise TypeError(f"{config}: model.class_path must be a SpikingDetector, got {type(cli.model).__name__}")
    return cli


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` (read with ``weights_only=True``) into ``module``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    module.load_state_dict(checkpoint["state_dict"])


def run_split(cli: SpikelocCLI, split: str) -> SpikingDetector:
    """Evaluate the model on ``split`` (``val`` or ``test``) with the config's trainer (progress bar on)."""
    if split not in ("val", "test"):
        raise ValueError(f"--split must be 'val' or 'test', got {split!r}")
    run = cli.trainer.validate if split == "val" else cli.trainer.test
    run(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli.model


def summary(module: SpikingDetector) -> dict[str, Any]:
    """JSON-ready results of the module's last evaluation."""
    res, firing = module.eval_results, module.firing
    out = {key: res.get(key) for key in ("map", "map_50", "map_75", "voc07")}
    out["per_class"] = dict(res.get("per_class", {}))
    out["map_50_per_step"] = list(module.map_50_per_step)
    if firing:
        out["firing"] = {"mean_firing_rate": firing["mean_firing_rate"], "per_layer": firing["firing_rate"]}
        out["energy"] = {key: firing[key] for key in ("synops", "macs", "ann_macs", "energy_snn_mj",
                                                       "energy_ann_mj", "energy_ratio")}
    return out


def format_report(results: dict[str, Any]) -> str:
    """Readable text report of :func:`summary`'s dict."""
    lines = ["", "Detection, AP in percent (prediction read at the last time step)",
             f"  mAP@[.5:.95] (COCO) {100 * results['map']:6.2f}",
             f"  mAP@0.5             {100 * results['map_50']:6.2f}",
             f"  mAP@0.75            {100 * results['map_75']:6.2f}",
             f"  VOC07 11-point @0.5 {100 * results['voc07']:6.2f}", "", "  AP@0.5 per class:"]
    for name, ap in results["per_class"].items():
        lines.append(f"    {name:<16s} {'   n/a' if ap < 0 else f'{100 * ap:6.2f}'}")
    steps = results["map_50_per_step"]
    lines += ["", "  mAP@0.5 per time step: " + "  ".join(f"t{t + 1}={100 * v:.1f}" for t, v in enumerate(steps))]
    if "energy" in results:
        energy, firing = results["energy"], results["firing"]
        lines += ["", f"  mean firing rate     {firing['mean_firing_rate']:.4f} spikes/neuron/step",
                  f"  SynOps per sample    {energy['synops']:.3e} (+ {energy['macs']:.3e} MACs)",
                  f"  energy per sample    {energy['energy_snn_mj']:.4f} mJ (ANN: {energy['energy_ann_mj']:.4f} mJ,"
                  f" ratio {energy['energy_ratio']:.1f}x)"]
    return "\n".join(lines)


def write_coco_results(module: SpikingDetector, datamodule: Any, path: str | Path) -> Path | None:
    """The last step's detections in the COCO results format (category ids of the datamodule when it
    has ``label_to_category_id``, else label + 1). ``None`` when this rank holds no merged metric."""
    if module.last_metric is None:
        return None
    results = module.last_metric.to_coco_results()
    mapping = getattr(datamodule, "label_to_category_id", None)
    if mapping is not None:
        for entry in results:
            entry["category_id"] = int(mapping[entry["category_id"] - 1])
    Path(path).write_text(json.dumps(results))
    return Path(path)


def annotate_split(module: SpikingDetector, datamodule: Any, split: str, out_dir: str | Path,
                   count: int = 4, score_threshold: float = 0.25) -> list[Path]:
    """Draw the first ``count`` images of ``split`` (input pixels): predictions red, ground truth green."""
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    paths: list[Path] = []
    module.eval()
    for batch in loader:
        images = batch["images"][:count - len(paths)].to(module.device)
        for image, det, target in zip(images, module.detect(images), batch["targets"]):
            picture = draw_detections(image if image.dim() == 3 else image[-1], det, module.class_names or [],
                                      target, score_threshold)
            paths.append(save_png(picture, Path(out_dir) / f"{split}_{int(target['image_id']):06d}.png"))
        if len(paths) >= count:
            break
    return paths


def save_outputs(module: SpikingDetector, datamodule: Any, split: str, out_dir: str | Path,
                 json_path: str | Path | None = None, num_images: int = 4) -> dict[str, Any]:
    """Everything ``tools/eval.py`` writes: COCO results, optional JSON, map_vs_step.png, images."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = summary(module)
    written = {"coco_results": write_coco_results(module, datamodule, out_dir / f"coco_results_{split}.json"),
               "plot": plot_map_vs_step(results["map_50_per_step"], out_dir / "map_vs_step.png"),
               "images": annotate_split(module, datamodule, split, out_dir, num_images)}
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
        written["json"] = Path(json_path)
    return written


# ---- prediction on image files ---------------------------------------------------------------
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


def letterbox_file(path: Path, size: int) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Read an image and letterbox it like the evaluation transform.

    Returns the source uint8 ``[3, H, W]``, the input float ``[3, S, S]`` and a target dict with
    ``scale``, ``pad`` and ``orig_size`` for mapping boxes back.
    """
    from datamodules.detection import make_record, make_sample, read_rgb
    from datamodules.transforms import eval_transform

    source = read_rgb(str(path))
    sample = make_sample(source, make_record(1, np.zeros((0, 4)), [], []), eval_transform(size))
    return source, sample["image"], sample["target"]


def predict_files(module: SpikingDetector, paths: Sequence[Path], size: int,
                  batch_size: int = 8) -> Iterator[tuple[Path, Tensor, dict[str, Tensor]]]:
    """Yield ``(path, source uint8 [3, H, W], detections in source pixels)`` for every file."""
    from spikeloc.models.detection import detections_to_original

    module.eval()
    for start in range(0, len(paths), batch_size):
        chunk = [letterbox_file(p, size) for p in paths[start:start + batch_size]]
        images = torch.stack([inputs for _, inputs, _ in chunk]).to(module.device)
        detections = detections_to_original(module.detect(images), [target for _, _, target in chunk])
        for path, (source, _, _), det in zip(paths[start:start + batch_size], chunk, detections):
            yield path, source, {key: value.cpu() for key, value in det.items()}
