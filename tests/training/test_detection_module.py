"""SpikingDetector: online training (FPTT / BPTT), evaluation through the module, DDP-identical mAP."""
import functools
import json

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.detection.shapes import ShapesDetectionDataModule
from datamodules.detection.voc import VOCDetectionDataModule
from spikeloc.models.detection import encode_boxes
from spikeloc.training import FPTTConfig
from spikeloc.training.detection import SpikingDetector, scaled_anchors
from tests.formats import write_voc_fixture
from .tiny import trainer

ANCHORS_64 = [[(10, 10), (16, 16), (24, 24)], [(24, 24), (36, 36), (52, 52)]]


def tiny_detector(**kwargs) -> SpikingDetector:
    defaults = dict(backbone="spyv4_tiny", backbone_kwargs={"width": 0.125}, num_classes=5, image_size=64,
                    anchors=ANCHORS_64, num_steps=2, optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    return SpikingDetector(**{**defaults, **kwargs})


def shapes(**kwargs) -> ShapesDetectionDataModule:
    defaults = dict(num_train=8, num_val=8, image_size=64, batch_size=4, augment=False, max_objects=2)
    return ShapesDetectionDataModule(**{**defaults, **kwargs})


class Losses(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["fused", "compiled"])
def test_the_detector_trains_on_cuda_as_with_the_eager_backend(tmp_path, backend):
    """FPTT on CUDA (K = T = 2 updates per batch), three batches with every neuron on ``backend``: the first
    batch's loss is the eager reference's to float rounding, every loss finite, the model on the GPU."""
    losses = {}
    for name in ("eager", backend):
        torch.manual_seed(0)
        module = tiny_detector(backbone_kwargs={"width": 0.125, "backend": name},
                               neck_kwargs={"neuron_kwargs": {"backend": name}})
        record = Losses()
        fit = trainer(tmp_path / name, accelerator="gpu", limit_train_batches=3, limit_val_batches=0,
                      callbacks=[record])
        fit.fit(module, datamodule=shapes(num_train=12))
        assert fit.global_step == 6 and next(module.parameters()).device.type == "cuda"
        losses[name] = torch.tensor(record.values)
    assert torch.isfinite(losses[backend]).all() and len(losses[backend]) == 3
    torch.testing.assert_close(losses[backend][0], losses["eager"][0], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["fptt", "bptt"])
def test_loss_falls_on_a_fixed_batch(tmp_path, algorithm):
    torch.manual_seed(0)
    data = shapes()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = tiny_detector(algorithm=algorithm, fptt=FPTTConfig(parts=2, consolidate=False))
    losses = Losses()
    fit = trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[losses])
    batches = 12 if algorithm == "fptt" else 24  # the same number of updates: FPTT takes K=2 per batch
    fit.fit(module, train_dataloaders=DataLoader([batch] * batches, batch_size=None))
    assert fit.global_step == 24
    assert all(torch.isfinite(torch.tensor(losses.values)))
    assert sum(losses.values[-3:]) / 3 < 0.7 * losses.values[0]
    assert {"train/box", "train/obj", "train/cls"} <= set(fit.callback_metrics)


def test_static_and_sequence_inputs():
    module = tiny_detector(num_steps=3)
    images = torch.rand(2, 3, 64, 64)
    assert len(module.run_sequence({"images": images})) == 3
    outputs = module.run_sequence({"images": images[:, None].expand(2, 4, 3, 64, 64)})
    assert len(outputs) == 4 and outputs[-1][0].shape == (2, 3, 4, 4, 10)
    assert {id(p) for p in module.backbone_parameters()} == {id(p) for p in module.model.backbone.parameters()}


def test_default_anchors_scale_with_the_input():
    assert scaled_anchors(416)[1][2] == (344, 319)
    assert tiny_detector(anchors=None, image_size=208).model.anchors[0][0] == (11.5, 13.5)


def perfect_outputs(batch, module):
    """Raw outputs that decode to exactly the batch's boxes (object i of an image on anchor i of scale 0)."""
    images, targets = batch["images"], batch["targets"]
    anchors, stride, k = module.model.anchors[0], module.model.strides[0], module.num_classes
    size = images.shape[-1]
    raws = [torch.full((len(targets), len(a), size // s, size // s, 5 + k), -20.0)
            for a, s in zip(module.model.anchors, module.model.strides)]
    for b, target in enumerate(targets):
        boxes = target["boxes"].reshape(-1, 4)
        assert len(boxes) <= len(anchors)
        cells = ((boxes[:, :2] + boxes[:, 2:]) / 2 / stride).floor()
        wh = torch.tensor(anchors[: len(boxes)])
        encoded = encode_boxes(boxes, cells, wh, stride)
        for i, (cell, label) in enumerate(zip(cells.long().tolist(), target["labels"].tolist())):
            raws[0][b, i, cell[1], cell[0], :4] = encoded[i]
            raws[0][b, i, cell[1], cell[0], 4] = 20.0
            raws[0][b, i, cell[1], cell[0], 5 + label] = 20.0
    return raws


def voc_data(tmp_path, image_size=128):
    write_voc_fixture(tmp_path / "voc", sets={"trainval": 4, "test": 6}, max_objects=3)
    return VOCDetectionDataModule(str(tmp_path / "voc"), train_sets=[("2007", "trainval")],
                                  val_sets=[("2007", "test")], image_size=image_size, batch_size=4, augment=False)


def per_step(metrics, stage="val"):
    return [float(metrics[f"{stage}/map_50_step{t}"]) for t in range(sum(k.startswith(f"{stage}/map_50_step")
                                                                         for k in metrics))]


def test_perfect_predictions_give_map_one_at_every_step(tmp_path, monkeypatch):
    data = voc_data(tmp_path)  # non-square images: letterbox scale and pad are exercised
    module = tiny_detector(num_classes=20, image_size=128, anchors=None, num_steps=3)
    monkeypatch.setattr(module, "run_sequence", lambda batch: [perfect_outputs(batch, module)] * 3)
    metrics = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    assert per_step(metrics) == [1.0, 1.0, 1.0]
    assert metrics["val/map"] == pytest.approx(1.0) and metrics["val/ap_50/car"] in (1.0, -1.0)
    assert module.class_names[0] == "aeroplane"  # taken from the datamodule
    zero = module.run_sequence  # a model that sees nothing scores zero
    monkeypatch.setattr(module, "run_sequence",
                        lambda batch: [[torch.full_like(r, -20.0) for r in o] for o in zero(batch)])
    metrics = trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    assert per_step(metrics) == [0.0, 0.0, 0.0]


class SaveMetrics(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_validation_end(self, trainer, module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["steps"] = per_step(metrics)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


def test_ddp_ranks_log_the_map_of_the_union(tmp_path):
    torch.manual_seed(0)
    data, module = shapes(num_val=9, batch_size=3), tiny_detector()  # 2 ranks: the sampler repeats one image
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[SaveMetrics(tmp_path)])
    fit.fit(module, datamodule=data)  # a briefly trained model: imperfect, non-trivial predictions
    single = json.loads((tmp_path / "rank0.json").read_text())
    ddp = trainer(tmp_path, strategy="ddp_spawn", devices=2, callbacks=[SaveMetrics(tmp_path)])
    ddp.validate(module, datamodule=data, verbose=False)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for key in ("val/map", "val/map_50", "val/map_75", "steps"):
        assert rank0[key] == rank1[key] == single[key], key
    assert len(rank0["steps"]) == 2


def test_checkpoint_rebuilds_the_module_with_no_config(tmp_path):
    torch.manual_seed(0)
    data, module = shapes(num_val=4), tiny_detector(num_steps=3, conf_threshold=0.01)
    fit = trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    fit.fit(module, datamodule=data)
    fit.save_checkpoint(tmp_path / "plain.ckpt")
    loaded = SpikingDetector.load_from_checkpoint(tmp_path / "plain.ckpt", map_location="cpu")
    assert (loaded.num_steps, loaded.postprocess.conf_threshold) == (3, 0.01)
    assert loaded.model.geometry.anchors == module.model.geometry.anchors
    assert loaded.class_names == data.class_names and loaded.fptt_config == module.fptt_config
    checkpoint = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert checkpoint["class_paths"] == {"model": "spikeloc.training.detection.SpikingDetector",
                                         "data": "datamodules.detection.shapes.ShapesDetectionDataModule"}
    assert checkpoint["datamodule_hyper_parameters"]["num_val"] == 4
    images = torch.rand(2, 3, 64, 64)
    module.eval()
    for found, again in zip(module.detect(images), loaded.eval().detect(images)):
        assert torch.equal(found["boxes"], again["boxes"]) and torch.equal(found["scores"], again["scores"])


def test_predict_step_gives_original_pixels(tmp_path):
    data, module = voc_data(tmp_path), tiny_detector(num_classes=20, image_size=128, anchors=None)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    raw = [perfect_outputs(batch, module)]
    module.run_sequence = lambda batch: raw
    found = module.predict_step(batch, 0)
    for detections, target in zip(found, batch["targets"]):
        assert detections["image_id"] == target["image_id"]
        assert sorted(detections["boxes"].round().tolist()) == sorted(target["orig_boxes"].round().tolist())
