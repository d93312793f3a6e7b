"""The detector assigns a batch's targets to anchors once, not once per time step, with the same numbers."""
import pytest
import torch
from torch.utils.data import DataLoader

import spikeloc.models.detection.loss as loss_module
from spikeloc.training import FPTTConfig
from spikeloc.training.detection import SpikingDetector
from .test_detection_module import shapes, tiny_detector
from .tiny import trainer


def _fit(tmp_path, monkeypatch, algorithm, cached):
    calls = []
    build = loss_module.build_targets
    monkeypatch.setattr(loss_module, "build_targets", lambda *a, **k: calls.append(1) or build(*a, **k))
    if not cached:  # the reference: the loss called with the raw targets at every step
        def step_loss(self, output, batch):
            total, parts = self.loss(output, batch["targets"])
            return {"loss": total, **parts}
        monkeypatch.setattr(SpikingDetector, "step_loss", step_loss)
    torch.manual_seed(0)
    data = shapes()
    data.setup("fit")
    batches = list(data.train_dataloader())[:2]
    torch.manual_seed(1)
    module = tiny_detector(num_steps=4, algorithm=algorithm, fptt=FPTTConfig(parts=2, consolidate=False))
    fit = trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    fit.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    monkeypatch.undo()
    return module, len(calls), fit.callback_metrics


@pytest.mark.parametrize("algorithm", ["fptt", "bptt"])
def test_targets_assigned_once_per_batch_same_numbers(tmp_path, monkeypatch, algorithm):
    reference, reference_calls, reference_metrics = _fit(tmp_path, monkeypatch, algorithm, cached=False)
    cached, calls, metrics = _fit(tmp_path, monkeypatch, algorithm, cached=True)
    assert reference_calls == 2 * 4 and calls == 2  # 2 batches of T = 4 weighted steps
    assert cached._prepared is None  # nothing kept after the batch
    for (name, a), b in zip(reference.named_parameters(), cached.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(a.grad, b.grad), name
    if algorithm == "fptt":
        assert all(torch.equal(a, b) for a, b in zip(reference.fptt.running + reference.fptt.trace,
                                                     cached.fptt.running + cached.fptt.trace))
    for key in ("train/loss_step", "train/box", "train/obj", "train/cls"):
        assert torch.equal(reference_metrics[key], metrics[key]), key


def test_validation_uses_the_raw_targets():
    module = tiny_detector(num_steps=2)
    data = shapes()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    outputs = module.run_sequence(batch)
    total, _ = module.loss(outputs[-1], batch["targets"])
    assert module._prepared is None and torch.isfinite(total)
    assert module.step_loss(outputs[-1], batch)["loss"] == total  # outside training_step: no cache
