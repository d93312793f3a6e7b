"""Spiking object detection (SPYv4) on the shared online loop (DESIGN 1.2, 1.3).

``SpikingDetector`` presents a static image for ``num_steps`` steps (or a ``[B, T, C, H, W]``
sequence of frames), takes the YOLO loss at every weighted step (FPTT: one optimizer step per
part) and evaluates the prediction of the LAST step, while also recording mAP at every step
(the "anytime" curve). mAP is computed once on the predictions gathered from all DDP ranks.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Sequence

import timm
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

import spikeloc.models  # noqa: F401  (registers the spiking models with timm)
from spikeloc.metrics.detection_map import DetectionMAP
from spikeloc.models.backbones.pretrained import load_pretrained
from spikeloc.models.detection import (SPYV4_ANCHORS, SpikingYOLO, YOLOLoss, YOLOPostprocess,
                                       detections_to_original)
from .loop import OnlineModule, present

Batch = dict[str, Any]  # {"images": [B, 3, S, S] or [B, T, 3, S, S], "targets": [B dicts]}
REFERENCE_SIZE = 416  # the input side the SPYv4 anchors were chosen for


def scaled_anchors(image_size: int) -> list[list[tuple[float, float]]]:
    """SPYv4's anchors scaled from 416x416 to ``image_size`` (identical at 416)."""
    factor = image_size / REFERENCE_SIZE
    return [[(w * factor, h * factor) for w, h in scale] for scale in SPYV4_ANCHORS]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_and_compute(maps: Sequence[DetectionMAP],
                       class_names: Sequence[str]) -> tuple[list[dict[str, Any]], DetectionMAP | None]:
    """``compute()`` of every per-step metric on the union of all ranks' predictions.

    Under DDP the states are gathered, rank 0 merges and computes ONCE and broadcasts the
    results, so every rank returns identical values. Returns ``(results per step, metric of the
    last step over the union)``; the metric is ``None`` on ranks other than 0.
    """
    if not _distributed():
        return [metric.compute() for metric in maps], (maps[-1] if maps else None)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [metric.state() for metric in maps])
    results: list[Any] = [None]
    merged = None
    if dist.get_rank() == 0:
        steps = max(len(rank) for rank in gathered)
        merged = [DetectionMAP(class_names).merge([rank[t] for rank in gathered if t < len(rank)])
                  for t in range(steps)]
        results[0] = [metric.compute() for metric in merged]
    dist.broadcast_object_list(results, src=0)
    return results[0], (merged[-1] if merged else None)


class SpikingDetector(OnlineModule):
    """Spiking YOLO (backbone by name from timm + spiking neck + non-spiking head) trained online.

    Args:
        backbone: registered backbone name (``spyv4_tiny``, ``ltc_resnet18`` ...), built with ``num_classes=0``.
        backbone_kwargs: extra backbone arguments (``width``, ``neuron``, ``out_strides`` ...).
        pretrained: local backbone weights (spikeloc ``.ckpt``, ``state_dict`` or ANN timm file).
        num_classes / in_channels: linked from the datamodule by the CLI.
        class_names: names for the metric; ``None``: the datamodule's ``class_names`` at setup.
        anchors: per scale a list of (w, h) in input pixels; ``None``: SPYv4's scaled to ``image_size``.
        readout: ``last`` (the head's output of each step) or ``leaky`` (integrated over steps).
        image_size: network input side (anchor scaling, head bias priors).
        neck_kwargs: ``neuron`` / ``neuron_kwargs`` / ``output_neuron`` of the neck cells.
        neuron: when given, the neuron of every cell of backbone and neck (``ann``: the non-spiking
            twin), unless ``backbone_kwargs`` / ``neck_kwargs`` name their own.
        init_from: a checkpoint of a whole detector (e.g. the trained ANN twin) loaded into backbone,
            neck and head before training; what it lacks (the tau-convs) stays fresh and is reported.
        loss_kwargs: extra :class:`YOLOLoss` arguments (``box_weight``, ``ignore_iou`` ...).
        conf_threshold / iou_threshold / max_detections: post-processing for evaluation.
        **kwargs: the loop's settings (``num_steps``, ``algorithm``, ``fptt`` ...), see :class:`OnlineModule`.
    """

    def __init__(self, backbone: str = "spyv4_tiny", backbone_kwargs: dict[str, Any] | None = None,
                 pretrained: str | None = None, num_classes: int = 20, in_channels: int = 3,
                 class_names: list[str] | None = None, anchors: list[list[tuple[float, float]]] | None = None,
                 readout: Literal["last", "leaky"] = "last", image_size: int = 416,
                 neck_kwargs: dict[str, Any] | None = None, loss_kwargs: dict[str, Any] | None = None,
                 conf_threshold: float = 0.005, iou_threshold: float = 0.45, max_detections: int = 100,
                 neuron: str | None = None, init_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backbone_kwargs, neck_kwargs = dict(backbone_kwargs or {}), dict(neck_kwargs or {})
        if neuron is not None:
            backbone_kwargs.setdefault("neuron", neuron)
            neck_kwargs.setdefault("neuron", neuron)
        net = timm.create_model(backbone, num_classes=0, in_chans=in_channels, **backbone_kwargs)
        if pretrained:
            rank_zero_info(load_pretrained(net, pretrained).summary())
        anchors = anchors if anchors is not None else scaled_anchors(image_size)
        self.model = SpikingYOLO(net, num_classes, anchors, readout, image_size=image_size, **neck_kwargs)
        if init_from:
            rank_zero_info(load_pretrained(self.model, init_from, prefix="model.").summary())
        self.loss = YOLOLoss(self.model.anchors, self.model.strides, num_classes, **(loss_kwargs or {}))
        self.postprocess = YOLOPostprocess(conf_threshold, iou_threshold, max_detections,
                                           anchors=self.model.anchors, strides=self.model.strides)
        self.num_classes, self.image_size = num_classes, image_size
        self.class_names = list(class_names) if class_names is not None else None
        self._check_class_names()
        self.map_50_per_step: list[float] = []  # mAP@0.5 of every time step, last evaluation
        self.eval_results: dict[str, Any] = {}  # DetectionMAP.compute() at the last step, last evaluation
        self.last_metric: DetectionMAP | None = None  # last step over all ranks (rank 0), for results files
        self._maps: list[DetectionMAP] = []
        self._parts: dict[str, Tensor] = {}

    def _check_class_names(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"model.init_args.class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.class_names is None:
            names = getattr(data, "class_names", None)
            self.class_names = list(names) if names else [f"class_{k}" for k in range(self.num_classes)]
            self._check_class_names()
        size = getattr(data, "image_size", None)
        if size is not None and size != self.image_size:
            warnings.warn(f"data.init_args.image_size={size} differs from model.init_args.image_size="
                          f"{self.image_size} (used for the default anchors and head priors)", stacklevel=2)

    # ---- the loop's hooks ----------------------------------------------------------------
    def inputs(self, batch: Batch) -> tuple[Callable[[int], Tensor], int]:
        return present(batch["images"], self.num_steps)

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[list[Tensor], Any]:
        """``x_t`` ``[B, 3, S, S]`` -> raw outputs per scale ``[B, A, S/s, S/s, 5 + K]`` and state."""
        return self.model(x_t, state)

    def step_loss(self, output: list[Tensor], batch: Batch) -> Tensor:
        total, parts = self.loss(output, batch["targets"])
        for name, value in parts.items():  # summed over steps on the device; logged per batch
            self._parts[name] = self._parts.get(name, 0) + value.detach()
        self._parts["steps"] = self._parts.get("steps", 0) + 1
        return total

    def spiking_network(self) -> nn.Module:
        return self.model

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.model.backbone.parameters())

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        self._parts = {}
        loss = super().training_step(batch, batch_idx)
        steps = self._parts.pop("steps", 1)
        for name, value in self._parts.items():
            self.log(f"train/{name}", value / steps, on_step=True, on_epoch=False)
        return loss

    # ---- inference -----------------------------------------------------------------------
    def detect(self, images: Tensor, step: int = -1) -> list[dict[str, Tensor]]:
        """Detections (input pixels) of ``images`` ``[B, 3, S, S]`` (or ``[B, T, 3, S, S]``) at ``step``."""
        return self.postprocess(self.run_sequence({"images": images})[step])

    # ---- evaluation ----------------------------------------------------------------------
    def start_evaluation(self) -> None:
        super().start_evaluation()
        self._maps = []

    def _eval_step(self, batch: Batch, stage: str) -> None:
        outputs = self.run_sequence(batch)  # T lists of raw outputs
        targets = batch["targets"]
        while len(self._maps) < len(outputs):
            self._maps.append(DetectionMAP(self.class_names or []))
        for metric, raw in zip(self._maps, outputs):
            metric.update(detections_to_original(self.postprocess(raw), targets), targets)
        loss, _ = self.loss(outputs[-1], targets)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(targets))

    def end_evaluation(self, stage: str) -> None:
        results, self.last_metric = gather_and_compute(self._maps, self.class_names or [])
        super().end_evaluation(stage)
        if not results:
            return
        self.map_50_per_step = [r["map_50"] for r in results]
        self.eval_results = results[-1]
        for key in ("map", "map_50", "map_75", "voc07"):  # identical on every rank: no reduction
            self.log(f"{stage}/{key}", float(self.eval_results[key]), prog_bar=key == "map_50")
        for t, value in enumerate(self.map_50_per_step):
            self.log(f"{stage}/map_50_step{t}", float(value))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")
