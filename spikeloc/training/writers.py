"""Callbacks that write what a detector evaluated or predicted: annotated images and COCO-style JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from torchvision.io import ImageReadMode, decode_image

from spikeloc.visualize import draw_detections, save_png


def _category_ids(results: list[dict], datamodule: Any) -> list[dict]:
    """Category ids of the datamodule's ``label_to_category_id`` (e.g. COCO's) instead of label + 1."""
    mapping = getattr(datamodule, "label_to_category_id", None)
    if mapping is not None:
        for entry in results:
            entry["category_id"] = int(mapping[entry["category_id"] - 1])
    return results


class EvaluationWriter(Callback):
    """During ``validate`` / ``test`` of a :class:`~spikeloc.training.SpikingDetector`, writes into ``out_dir``:

    * ``coco_results_<stage>.json``: the last step's detections of every rank (gathered, each image
      once) in the COCO results format, with the datamodule's category ids when it has them;
    * ``<stage>_<image_id>.png``: the first ``num_images`` images (input pixels), predictions red and
      ground truth green, from the detections ``validation_step`` / ``test_step`` return.
    """

    def __init__(self, out_dir: str | Path, num_images: int = 4, score_threshold: float = 0.25) -> None:
        self.out_dir, self.num_images, self.score_threshold = Path(out_dir), num_images, score_threshold
        self.images: list[Path] = []
        self.results: Path | None = None

    def _draw(self, trainer: pl.Trainer, module: Any, outputs: dict, batch: dict, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for image, found, target in zip(batch["images"], outputs["detections"], batch["targets"]):
            if len(self.images) >= self.num_images:
                return
            picture = draw_detections(image if image.dim() == 3 else image[-1], found, module.class_names or [],
                                      target, self.score_threshold)
            self.images.append(save_png(picture, self.out_dir / f"{stage}_{int(target['image_id']):06d}.png"))

    def _write_results(self, trainer: pl.Trainer, module: Any, stage: str) -> None:
        results = module.maps[-1].coco_results()  # every rank takes part in the gather
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.results = self.out_dir / f"coco_results_{stage}.json"
            self.results.write_text(json.dumps(_category_ids(results, trainer.datamodule)))

    def on_validation_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, module, outputs, batch, "val")

    def on_test_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._draw(trainer, module, outputs, batch, "test")

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        if not trainer.sanity_checking:
            self._write_results(trainer, module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        self._write_results(trainer, module, "test")


class DetectionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` of a detector returns (original pixels): ``<out_dir>/<file stem>.png``
    with the boxes of at least ``score_threshold`` drawn, for targets that carry their file ``path``, and
    ``<out_dir>/detections.json`` (COCO results format plus ``file_name``; one file per rank under DDP)."""

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], score_threshold: float = 0.25) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.class_names, self.score_threshold = Path(out_dir), list(class_names), score_threshold
        self.results: list[dict] = []
        self.pictures: list[tuple[str, int, Path]] = []  # (source file, detections drawn, picture)

    def write_on_batch_end(self, trainer: pl.Trainer, module: Any, prediction: list[dict], batch_indices: Any,
                           batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        for found, target in zip(prediction, batch["targets"]):
            found = {key: value.cpu() for key, value in found.items() if key != "image_id"}
            path = target.get("path")
            for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                     found["labels"].tolist()):
                self.results.append({"image_id": int(target["image_id"]), "category_id": label + 1,
                                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
                                     **({"file_name": Path(path).name} if path else {})})
            if path:
                source = decode_image(path, mode=ImageReadMode.RGB)
                picture = draw_detections(source, found, self.class_names, score_threshold=self.score_threshold)
                drawn = int((found["scores"] >= self.score_threshold).sum())
                self.pictures.append((path, drawn, save_png(picture, self.out_dir / f"{Path(path).stem}.png")))

    def on_predict_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
        name = "detections.json" if trainer.world_size == 1 else f"detections_rank{trainer.global_rank}.json"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / name).write_text(json.dumps(_category_ids(self.results, trainer.datamodule)))
