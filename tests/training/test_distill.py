"""Distillation from the frozen ANN twin in the spiking phase (``SpikingDetector(distill=...)``)."""
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from spikeloc.models.detection import distill_loss
from spikeloc.training import FPTTConfig
from .test_detection_module import shapes, tiny_detector
from .tiny import trainer


def test_distill_loss_against_a_plain_loop():
    torch.manual_seed(0)
    student = [torch.randn(2, 3, 4, 4, 7), torch.randn(2, 3, 2, 2, 7)]
    teacher = [torch.randn_like(s) for s in student]
    expected = 0.0
    for s, t in zip(student, teacher):
        for index in torch.cartesian_prod(*[torch.arange(n) for n in s.shape[:4]]):
            a, b = s[tuple(index)], t[tuple(index)]
            p = torch.sigmoid(b[4])
            expected += F.binary_cross_entropy_with_logits(a[4], p)
            expected += p * F.binary_cross_entropy_with_logits(a[5:], torch.sigmoid(b[5:]), reduction="sum")
            expected += p * ((a[:4] - b[:4]) ** 2).sum()
    assert distill_loss(student, teacher) == pytest.approx(float(expected) / 2, rel=1e-5)
    same = distill_loss(teacher, teacher)  # the gradient vanishes where the student equals the teacher
    raw = [t.clone().requires_grad_() for t in teacher]
    distill_loss(raw, teacher).backward()
    assert all(r.grad.abs().max() < 1e-6 for r in raw) and same > 0  # (BCE to soft targets: the entropy)


def _run(tmp_path, epochs, ckpt_path=None):
    torch.manual_seed(0)
    module = tiny_detector(num_steps=2, fptt=FPTTConfig(parts=2, consolidate=False), twin_epochs=1, distill=1.0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit = trainer(tmp_path, max_epochs=epochs, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoints])
    fit.fit(module, datamodule=shapes(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module, fit


def test_the_teacher_is_the_twin_at_the_switch_frozen_and_resumed(tmp_path):
    module, fit = _run(tmp_path / "a", epochs=3)
    teacher = module._teacher[0]
    at_switch = torch.load(tmp_path / "a" / "ckpt" / "epoch=0.ckpt", weights_only=True)["state_dict"]
    for name, value in teacher.state_dict().items():  # the twin's weights as the spiking phase began
        assert torch.equal(value, at_switch[f"model.{name}"])
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not any(name.startswith("_teacher") for name in module.state_dict())  # not part of the model
    assert "train/distill" in fit.callback_metrics
    resumed, _ = _run(tmp_path / "b", epochs=3, ckpt_path=str(tmp_path / "a" / "ckpt" / "epoch=1.ckpt"))
    for p, q in zip(module.parameters(), resumed.parameters()):
        assert torch.equal(p, q)  # the teacher came back from the checkpoint, so the run continued exactly
