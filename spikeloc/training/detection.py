"""Spiking object detection (SPYv4) on the shared online loop (docs/detection.md; the paper's SPYv4).

``SpikingDetector`` presents a static image for ``num_steps`` steps (or a ``[B, T, C, H, W]``
sequence of frames), takes the YOLO loss at every weighted step (FPTT: one optimizer step per
part) and evaluates the prediction of the LAST step, while also recording mAP at every step
(the "anytime" curve): one :class:`~spikeloc.metrics.DetectionMAP` per step, whose states
torchmetrics gathers from all DDP ranks before the mAP is computed once on their union.
Everything it measures is logged (``val/map_50``, ``val/ap_50/<class>``, ``val/map_50_step<t>`` ...).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Literal

import timm
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from spikeloc.config_checks import options_type
from spikeloc.metrics import DetectionMAP
from spikeloc.models.backbones.pretrained import load_pretrained
from spikeloc.models.detection import (SpikingYOLO, SpikingYOLONeck, YOLOLoss, YOLOPostprocess,
                                       detections_to_original, distill_loss, scaled_anchors)
from spikeloc.neurons import set_twin
from .anchor_check import datamodule_advice
from .loop import OnlineModule
from .time_loop import present

Batch = dict[str, Any]  # {"images": [B, 3, S, S] or [B, T, 3, S, S], "targets": [B dicts]}
# the types of ``loss_kwargs`` / ``neck_kwargs``: the keyword arguments of the constructors they go to
LossOptions = options_type(YOLOLoss.__init__, "LossOptions", __name__, skip=("geometry", "num_classes"))
NeckOptions = options_type(SpikingYOLONeck.__init__, "NeckOptions", __name__, skip=("in_channels", "upsample"))
__all__ = ["SpikingDetector", "scaled_anchors"]


class SpikingDetector(OnlineModule):
    """Spiking YOLO (backbone by name from timm + spiking neck + non-spiking head) trained online.

    Args:
        backbone: registered backbone name (``spyv4_tiny``, ``ltc_resnet18`` ...), built with ``num_classes=0``.
        backbone_kwargs: extra backbone arguments (``width``, ``neuron``, ``out_strides`` ...).
        pretrained: local backbone weights (spikeloc ``.ckpt``, ``state_dict`` or ANN timm file).
        num_classes / in_channels: linked from the datamodule by the CLI.
        class_names: names for the metric; ``None``: the datamodule's ``class_names`` at setup.
        anchors: per scale a list of (w, h) in input pixels (or, with ``anchor_masks``, one flat list);
            ``None``: SPYv4's six scaled to ``image_size``.
        anchor_masks, scale_xy, log_wh_clamp, neck_upsample, init_state, input_dropout, weight_init,
            head_init, eval_seed: see :class:`SpikingYOLO` (docs/paper.md gives the reference);
            ``eval_seed: null`` evaluates with unseeded initial membranes, another draw each time.
        readout: ``last`` (the head's output of each step), ``leaky`` (integrated over steps) or ``mean``
            (their running mean: with spiking neck outputs, the head of the spike counts).
        image_size: network input side (anchor scaling, head bias priors).
        neck_kwargs: ``neuron`` / ``neuron_kwargs`` / ``output_neuron`` of the neck cells (the keyword arguments
            of :class:`SpikingYOLONeck`, checked against its signature; ``neuron_kwargs`` against its neurons').
        neuron: when given, the neuron of every cell of backbone and neck (``ann``: the non-spiking
            twin), unless ``backbone_kwargs`` / ``neck_kwargs`` name their own.
        init_from: a checkpoint of a whole detector (e.g. the trained ANN twin) loaded into backbone,
            neck and head before training; what it lacks (the tau-convs) stays fresh and is reported.
        check_anchors: when training starts, measure how well the anchors fit the boxes of 256 training
            samples and warn, with k-means anchors to use instead, when they fit poorly.
        loss_kwargs: extra :class:`YOLOLoss` arguments (``box_weight``, ``ignore_iou``, ``assign`` ...), checked
            against its signature.
        conf_threshold / iou_threshold / max_detections / pre_nms_top_k / multi_label: post-processing
            for evaluation, see :class:`YOLOPostprocess`.
        clip_boxes: clip detections to the original image (``False``: as the paper's code).
        map_kwargs: extra :class:`DetectionMAP` arguments (``iou_rule``, ``det_format``).
        distill: weight of a distillation term in the spiking phase (:func:`distill_loss`): the network's
            ANN twin, frozen as it is when the spiking phase starts (after the twin epochs, or the weights of
            ``init_from``), is the teacher of every step (docs/learning.md). Static images only.
        **kwargs: the loop's settings (``num_steps``, ``algorithm``, ``fptt`` ...), see :class:`OnlineModule`.
    """

    def __init__(self, backbone: str = "spyv4_tiny", backbone_kwargs: dict[str, Any] | None = None,
                 pretrained: str | None = None, num_classes: int = 20, in_channels: int = 3,
                 class_names: list[str] | None = None, anchors: list[list[tuple[float, float]]] | None = None,
                 readout: Literal["last", "leaky", "mean"] = "last", image_size: int = 416,
                 neck_kwargs: NeckOptions | None = None, loss_kwargs: LossOptions | None = None,
                 conf_threshold: float = 0.005, iou_threshold: float = 0.45, max_detections: int | None = 100,
                 pre_nms_top_k: int | None = 1000, multi_label: bool = True,
                 anchor_masks: list[list[int]] | None = None, scale_xy: float = 1.05,
                 log_wh_clamp: tuple[float, float] | None = (-8.0, 4.0),
                 neck_upsample: Literal["current", "spikes"] = "current",
                 init_state: Literal["zeros", "uniform"] = "zeros", input_dropout: float = 0.0,
                 weight_init: Literal["default", "xavier_normal"] = "default", neuron: str | None = None,
                 init_from: str | None = None, check_anchors: bool = True,
                 head_init: Literal["default", "priors", "xavier_normal"] | None = None, eval_seed: int | None = 0,
                 clip_boxes: bool = True, map_kwargs: dict[str, Any] | None = None, distill: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backbone_kwargs, neck_kwargs = dict(backbone_kwargs or {}), dict(neck_kwargs or {})
        if neuron is not None:
            backbone_kwargs.setdefault("neuron", neuron)
            neck_kwargs.setdefault("neuron", neuron)
        net = timm.create_model(backbone, num_classes=0, in_chans=in_channels, **backbone_kwargs)
        self.model = SpikingYOLO(net, num_classes, anchors, readout, image_size=image_size, anchor_masks=anchor_masks,
                                 scale_xy=scale_xy, log_wh_clamp=log_wh_clamp, neck_upsample=neck_upsample,
                                 init_state=init_state, input_dropout=input_dropout, weight_init=weight_init,
                                 head_init=head_init, eval_seed=eval_seed, **neck_kwargs)
        if pretrained:  # after weight_init, which covers the whole network
            rank_zero_info(load_pretrained(net, pretrained).summary())
        if init_from:
            rank_zero_info(load_pretrained(self.model, init_from, prefix="model.").summary())
        self.loss = YOLOLoss(self.model.geometry, num_classes, **(loss_kwargs or {}))
        self.postprocess = YOLOPostprocess(conf_threshold, iou_threshold, max_detections, self.model.geometry,
                                           pre_nms_top_k, multi_label)
        self.num_classes, self.image_size, self.check_anchors = num_classes, image_size, check_anchors
        self.clip_boxes, self.map_kwargs = clip_boxes, dict(map_kwargs or {})
        self._prepared: dict | None = None  # the batch's prepared targets by grid sizes, during training_step
        self.distill = distill
        self._teacher: tuple[nn.Module, ...] = ()  # the frozen twin (a tuple: not a submodule, not trained)
        self._taught: list[Tensor] | None = None  # the teacher's outputs for the batch under way
        self.class_names = list(class_names) if class_names is not None else None
        self._check_class_names()
        self.maps = nn.ModuleList(self._new_map() for _ in range(self.num_steps))  # mAP of every time step
        for key in ("pretrained", "init_from"):  # the checkpoint holds every weight: rebuilding reads no file
            if self.hparams.get(key):
                self.hparams[key] = None

    def _check_class_names(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"model.init_args.class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None)  # a hook: called by the trainer, which is attached
        if self.class_names is None:
            names = getattr(data, "class_names", None)
            self.class_names = list(names) if names else [f"class_{k}" for k in range(self.num_classes)]
            self._check_class_names()
            self.hparams["class_names"] = self.class_names  # the checkpoint names its classes
        for metric in self.maps:
            metric.class_names = self.class_names
        size = getattr(data, "image_size", None)
        if size is not None and size != self.image_size:
            warnings.warn(f"data.init_args.image_size={size} differs from model.init_args.image_size="
                          f"{self.image_size} (used for the default anchors and head priors)", stacklevel=2)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        data = getattr(self.trainer, "datamodule", None)
        advice = datamodule_advice(data, self.model.geometry) if self.check_anchors and data is not None else None
        if advice:
            rank_zero_warn(advice)

    # ---- the loop's hooks ----------------------------------------------------------------
    def inputs(self, batch: Batch) -> tuple[Callable[[int], Tensor], int]:
        return present(batch["images"], self.time_steps)

    def forward_step(self, x_t: Tensor, state: Any) -> tuple[list[Tensor], Any]:
        """``x_t`` ``[B, 3, S, S]`` -> raw outputs per scale ``[B, A, S/s, S/s, 5 + K]`` and state
        (compiled with ``compile_step``, see :meth:`OnlineModule.call_step`)."""
        return self.call_step(self.model, x_t, state)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """The loop's batch, with the targets assigned to anchors once for all its time steps (and the
        teacher's outputs computed once, with ``distill``)."""
        self._prepared = {}
        if self._teacher and not self.twin_active:
            if batch["images"].dim() != 4:
                raise ValueError("model.init_args.distill needs static images [B, C, H, W]; this batch holds "
                                 f"sequences {tuple(batch['images'].shape)}")
            with torch.no_grad():
                self._taught = self._teacher[0](batch["images"], None)[0]
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._prepared = self._taught = None  # nothing outlives the batch

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.distill and not self.twin_active and not self._teacher:
            self._teacher = (self._frozen_twin(),)
        if self._teacher:
            self._teacher[0].to(self.device)  # restored from a checkpoint before the module moved

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._teacher:
            checkpoint["distill_teacher"] = self._teacher[0].state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if checkpoint.get("distill_teacher") is not None:
            self._teacher = (self._frozen_twin(checkpoint["distill_teacher"]),)

    def _frozen_twin(self, state: dict | None = None) -> nn.Module:
        """The model as its ANN twin, frozen in evaluation mode: the current weights, or ``state``."""
        teacher = copy.deepcopy(self.model)
        if state is not None:
            teacher.load_state_dict(state)
        set_twin(teacher, True)
        return teacher.eval().requires_grad_(False)

    def step_loss(self, output: list[Tensor], batch: Batch) -> dict[str, Tensor]:
        """YOLO loss of one step: ``{"loss", "box", "obj", "cls"}``. Inside :meth:`training_step` the
        batch-constant part (:meth:`YOLOLoss.prepare`) is computed at the first weighted step and reused."""
        targets = batch["targets"]
        if self._prepared is not None:
            sizes = tuple(tuple(r.shape[2:4]) for r in output)
            if sizes not in self._prepared:
                self._prepared[sizes] = self.loss.prepare(targets, sizes, output[0])
            targets = self._prepared[sizes]
        total, parts = self.loss(output, targets)
        if self._taught is not None:
            parts["distill"] = distill_loss(output, self._taught)
            total = total + self.distill * parts["distill"]
        return {"loss": total, **parts}

    def spiking_network(self) -> nn.Module:
        return self.model

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.model.backbone.parameters())

    # ---- inference -----------------------------------------------------------------------
    def detect(self, images: Tensor, step: int = -1) -> list[dict[str, Tensor]]:
        """Detections (input pixels) of ``images`` ``[B, 3, S, S]`` (or ``[B, T, 3, S, S]``) at ``step``."""
        return self.postprocess(self.run_sequence({"images": images})[step])

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """The last step's detections of every image, in original pixels when the targets carry
        ``scale``/``pad``/``orig_size`` (else input pixels), with the target's ``image_id``."""
        detections = self.detect(batch["images"])
        targets = batch.get("targets")
        if not targets:
            return detections
        if all("scale" in target for target in targets):
            detections = detections_to_original(detections, targets, self.clip_boxes)
        return [{**found, "image_id": target.get("image_id")} for found, target in zip(detections, targets)]

    # ---- evaluation ----------------------------------------------------------------------
    def _new_map(self) -> DetectionMAP:
        names = self.class_names or [f"class_{k}" for k in range(self.num_classes)]
        return DetectionMAP(names, **{"det_boxes": "continuous", **self.map_kwargs})  # its own boxes are spikeloc's

    def start_evaluation(self) -> None:
        super().start_evaluation()
        for metric in self.maps:
            metric.reset()

    def _eval_step(self, batch: Batch, stage: str, rows: list[int] | None = None) -> dict[str, Any]:
        """Updates the metric of every step with the batch's rows ``rows`` (None: all; windows without a label
        are not scored, see ``StreamingDetector``); returns the last step's ``detections`` of every row (input
        pixels)."""
        outputs = self.run_sequence(batch)  # T lists of raw outputs
        targets = batch["targets"]
        while len(self.maps) < len(outputs):  # sequences longer than num_steps
            self.maps.append(self._new_map().to(self.device))
        detections = [self.postprocess(raw) for raw in outputs]
        last = detections[-1]
        if rows is not None:
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            targets, detections = [targets[i] for i in rows], [[found[i] for i in rows] for found in detections]
            outputs = [[raw.index_select(0, index) for raw in out] for out in outputs]
        if targets:
            for metric, found in zip(self.maps, detections):
                metric.update(detections_to_original(found, targets, self.clip_boxes), targets)
            loss, _ = self.loss(outputs[-1], targets)
            self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(targets))
        return {"detections": last}

    def end_evaluation(self, stage: str) -> None:
        """Logs the last step's ``map``, ``map_50``, ``map_75``, ``voc07``, ``voc_ap`` and ``ap_50/<class>``, and
        ``map_50_step<t>`` of every step (identical on every rank: computed on the gathered union)."""
        super().end_evaluation(stage)
        results = [metric.compute() for metric in self.maps if metric.update_count]
        if not results:
            return
        for key in ("map", "map_50", "map_75", "voc07", "voc_ap"):
            self.log(f"{stage}/{key}", results[-1][key], prog_bar=key == "map_50")
        for name, value in results[-1]["per_class"].items():
            self.log(f"{stage}/ap_50/{name}", value)
        for t, result in enumerate(results):
            self.log(f"{stage}/map_50_step{t}", result["map_50"])

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, "test")
