"""configs/spyv4_voc.yaml builds the paper's experiment, and the detector wires its options."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.detection.shapes import ShapesDetectionDataModule
from spikeloc.cli import SpikelocCLI
from spikeloc.models.detection import SPYV4_ALL_ANCHORS, SPYV4_MASKS, count_parameters
from spikeloc.training import FPTTConfig
from spikeloc.models.backbones import yolov4_tiny_name
from spikeloc.training.detection import SpikingDetector
from tests.models.test_yolov4_tiny_weights import YoloBody
from .tiny import trainer

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "spyv4_voc.yaml")


def test_spyv4_voc_config_selects_the_reference(tmp_path):
    torch.manual_seed(0)
    ann = YoloBody()  # a non-spiking YOLOv4-tiny, the file the config starts from
    torch.save(ann.state_dict(), tmp_path / "yolov4_tiny_weights_voc.pth")
    cli = SpikelocCLI(args=["--config", CONFIG, "--trainer.logger", "false",
                            "--model.init_args.init_from", str(tmp_path / "yolov4_tiny_weights_voc.pth")])
    module, data = cli.model, cli.datamodule
    model, geometry = module.model, module.model.geometry
    weights = {key: value for key, value in ann.state_dict().items() if not key.endswith("num_batches_tracked")}
    assert len(weights) == 99
    assert all(torch.equal(model.state_dict()[yolov4_tiny_name(key)], value) for key, value in weights.items())
    assert module.loss.geometry is geometry and module.postprocess.geometry is geometry
    assert geometry.anchors == tuple((float(w), float(h)) for w, h in SPYV4_ALL_ANCHORS)
    assert geometry.masks == SPYV4_MASKS and geometry.scale_xy == 1.0 and geometry.log_wh_clamp is None
    assert 13e6 < count_parameters(model) < 15e6  # the paper's "about 14M parameters"
    assert model.neck.upsample == "current" and model.input_dropout.p == 0.1
    assert {m.init_state for m in model.modules() if hasattr(m, "tau_conv")} == {"uniform"}
    loss = module.loss
    assert (loss.assign, loss.normalize, loss.ignore_iou, loss.box_weight) == ("best", "positives_per_scale", 0.5, 1.0)
    assert loss.box_area_weight and loss.ciou_alpha_grad and loss.bce_clamp == 1e-7
    assert not module.clip_boxes and module.model.eval_seed == 0 and module.freeze_backbone_epochs == 50
    assert (module.maps[0].iou_rule, module.maps[0].det_format) == (">=", "paper")
    hue = [t for t in data.train_transform().transforms if type(t).__name__ == "HSVJitter"]
    assert [t.hue_rule for t in hue] == ["reference"]
    post = module.postprocess
    assert (post.conf_threshold, post.iou_threshold, post.max_detections, post.pre_nms_top_k, post.multi_label) == \
        (0.001, 0.5, None, None, False)
    assert module.fptt_config.alpha == 0.1 and module.fptt_config.update_alpha == 0.5
    assert module.num_steps == 8 and not data.letterbox and data.augmentation == "reference" and data.batch_size == 32
    assert data.mosaic.p == 0.0 and data.mosaic_for("train") is None  # the reference's optional mosaic, off


def test_recipe_config_selects_the_frame_detectors_recipe():
    recipe = str(Path(CONFIG).with_name("spyv4_voc_recipe.yaml"))
    cli = SpikelocCLI(args=["--config", recipe, "--trainer.logger", "false"])
    module, model = cli.model, cli.model.model
    neurons = [m for m in model.modules() if type(m).__name__.endswith("Neuron")]
    kinds = {type(m).__name__ for m in neurons}
    assert type(model.backbone.conv1.neuron).__name__ == "ANNNeuron"  # the analog first layer
    assert type(model.neck.top.neuron).__name__ == "LTCReadoutNeuron" and "LTCNeuron" in kinds
    assert {m.threshold for m in neurons if type(m).__name__ == "LTCNeuron"} == {0.5}
    assert module.loss.box_weight == 4.0 and module.twin_epochs == 80 and module.num_steps == 8


def test_pretrained_backbone_is_loaded_after_weight_init(tmp_path):
    kwargs = dict(backbone="spyv4_tiny", backbone_kwargs={"width": 0.125}, num_classes=3, image_size=64,
                  weight_init="xavier_normal")
    torch.manual_seed(0)
    source = SpikingDetector(**kwargs)
    path = tmp_path / "backbone.pt"
    torch.save(source.model.backbone.state_dict(), path)
    torch.manual_seed(1)
    loaded = SpikingDetector(**kwargs, pretrained=str(path))
    theirs = source.model.backbone.state_dict()
    for name, mine in loaded.model.backbone.state_dict().items():
        assert torch.equal(mine, theirs[name]), name
    assert not torch.equal(loaded.model.neck.top.conv.weight, source.model.neck.top.conv.weight)


def test_fit_with_the_reference_options(tmp_path):
    torch.manual_seed(0)
    data = ShapesDetectionDataModule(num_train=4, num_val=4, image_size=64, batch_size=2, augment=False,
                                     max_objects=2)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = SpikingDetector(
        backbone="spyv4_tiny", backbone_kwargs={"width": 0.125}, num_classes=data.num_classes, image_size=64,
        num_steps=2, init_state="uniform", input_dropout=0.1, weight_init="xavier_normal", scale_xy=1.0,
        log_wh_clamp=None, fptt=FPTTConfig(alpha=0.1, update_alpha=0.5, parts=2, consolidate=False),
        loss_kwargs=dict(assign="best", normalize="positives_per_scale", box_area_weight=True, ciou_alpha_grad=True,
                         ignore_iou=0.5, box_weight=1.0, bce_clamp=1e-7), head_init="default",
        conf_threshold=0.001, iou_threshold=0.5, max_detections=None, pre_nms_top_k=None, multi_label=False,
        clip_boxes=False, map_kwargs=dict(iou_rule=">=", det_format="paper"),
        optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    fit = trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    fit.fit(module, train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    logged = trainer(tmp_path).validate(module, dataloaders=DataLoader([batch], batch_size=None), verbose=False)[0]
    assert 0 <= logged["val/voc_ap"] <= 1 and module.maps[-1].iou_rule == ">="
    metric = module.maps[-1]
    written = metric.voc_rows(metric.gathered())[1][:, 1:6]
    assert np.array_equal(written[:, :4], np.trunc(written[:, :4]))  # the paper's integer boxes
    assert len(written) and np.allclose(written[:, 4] * 1e4, np.round(written[:, 4] * 1e4))  # 4-decimal scores
    assert fit.global_step == 4 and module.fptt.update_alpha == 0.5 and module.fptt.alpha == 0.1
    assert all(torch.isfinite(p).all() for p in module.parameters())
    module.eval()
    first = module.detect(batch["images"])
    again = module.detect(batch["images"])  # seeded uniform membranes: evaluation is reproducible
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(first, again))
