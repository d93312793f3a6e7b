"""The shared FPTT / BPTT loop inside a real Lightning Trainer."""
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from spikeloc import kernels
from spikeloc.training import FPTTConfig, loop, split_steps, step_weights
from spikeloc.training.loop import clip_gradients
from .tiny import QuadrantData, tiny_classifier, trainer

KERNELS = pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")


def test_step_weights():
    assert step_weights(4, "uniform") == [1, 1, 1, 1]
    assert step_weights(4, "linear") == [0.25, 0.5, 0.75, 1.0]
    assert step_weights(4, "last") == [0, 0, 0, 1]
    assert step_weights(4, "uniform", start=2) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no step"):
        step_weights(4, "last", start=4)


def test_split_steps():
    assert split_steps(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    with pytest.raises(ValueError, match="must divide"):
        split_steps(8, 3)


def _val_loss(module, data, tmp_path):
    return trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]["val/loss"]


@pytest.mark.parametrize("algorithm, epochs", [("fptt", 3), ("bptt", 6)])  # BPTT: 1 update per batch, not T
def test_training_reduces_loss(tmp_path, algorithm, epochs):
    torch.manual_seed(0)
    data, module = QuadrantData(), tiny_classifier(algorithm=algorithm, loss_weighting="linear")
    before = _val_loss(module, data, tmp_path)
    trainer(tmp_path, max_epochs=epochs).fit(module, datamodule=data)
    after = _val_loss(module, data, tmp_path)
    assert after < 0.5 * before


def test_fptt_takes_k_steps_per_batch_and_consolidates(tmp_path):
    torch.manual_seed(0)
    module = tiny_classifier(fptt=FPTTConfig(parts=2, consolidate=True))
    fit = trainer(tmp_path, limit_train_batches=3)
    fit.fit(module, datamodule=QuadrantData())
    assert fit.global_step == 3 * 2
    assert all(torch.equal(p, w) for p, w in zip(module.parameters(), module.fptt.running))


@pytest.mark.parametrize("precision, fused", [("32-true", False), ("32-true", True), ("bf16-mixed", True)])
def test_gradients_are_clipped(tmp_path, monkeypatch, precision, fused):
    """Also for a fused optimizer under bf16-mixed, which Lightning refuses to clip under any mixed
    precision (its step would unscale 16-mixed gradients; bf16-mixed scales nothing)."""
    norms = []
    monkeypatch.setattr(loop, "clip_gradients", lambda *args: norms.append(clip_gradients(*args)) or norms[-1])
    torch.manual_seed(0)
    clip, lr = 1e-3, 1.0
    module = tiny_classifier(algorithm="bptt", gradient_clip_val=clip,
                             optimizer=lambda params: torch.optim.SGD(params, lr=lr, fused=fused))
    before = [p.detach().clone() for p in module.parameters()]
    trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, precision=precision).fit(
        module, datamodule=QuadrantData())
    moved = torch.stack([(p.detach() - b).norm() for p, b in zip(module.parameters(), before)]).norm()
    assert 0 < moved <= clip * lr * 1.0001
    assert norms and all(norm > clip for norm in norms)  # the total norm, which the non-finite guard reuses


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True),
                                  lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True)])
def test_a_fused_optimizer_is_clipped_by_division(tmp_path, monkeypatch, make):
    """A fused optimizer's gradients are divided by ``(norm + 1e-6) / max_norm`` (as its fused step divides by a
    scale): the same training as ``clip_grad_norm_``'s multiplication to float rounding, not bitwise."""
    def multiply(module, optimizer):
        return torch.nn.utils.clip_grad_norm_(list(module.parameters()), module.gradient_clip_val)

    results = []
    for clip in (clip_gradients, multiply):
        monkeypatch.setattr(loop, "clip_gradients", clip)
        torch.manual_seed(0)
        module = tiny_classifier(fptt=FPTTConfig(parts=2), gradient_clip_val=1e-2, optimizer=make)
        trainer(tmp_path, limit_train_batches=3, limit_val_batches=0).fit(module, datamodule=QuadrantData())
        results.append([p.detach().clone() for p in module.parameters()])
    assert not all(torch.equal(a, b) for a, b in zip(*results))  # the two round differently ...
    for divided, multiplied in zip(*results):  # ... and agree
        torch.testing.assert_close(divided, multiplied, rtol=1e-5, atol=1e-6)


def test_step_scheduler_advances_once_per_batch(tmp_path):
    module = tiny_classifier(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
                             scheduler_interval="step", fptt=FPTTConfig(parts=4))
    trainer(tmp_path, limit_train_batches=3, limit_val_batches=0).fit(module, datamodule=QuadrantData())
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**3)


def test_bf16_mixed_precision_trains(tmp_path):
    torch.manual_seed(0)
    module = tiny_classifier()
    before = [p.detach().clone() for p in module.parameters()]
    trainer(tmp_path, precision="bf16-mixed", limit_train_batches=2, limit_val_batches=0).fit(
        module, datamodule=QuadrantData())
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def _fit(tmp_path, epochs, ckpt_path=None, fptt_backend="eager"):
    torch.manual_seed(0)
    module = tiny_classifier(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7),
                             fptt=FPTTConfig(parts=2, consolidate=False, backend=fptt_backend))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit = trainer(tmp_path, max_epochs=epochs, limit_val_batches=0, callbacks=[checkpoints],
                  enable_checkpointing=True)
    fit.fit(module, datamodule=QuadrantData(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module, fit


@pytest.mark.parametrize("fptt_backend", ["eager", pytest.param("cpu_kernels", marks=KERNELS)])
def test_resume_equals_uninterrupted_run_bitwise(tmp_path, fptt_backend):
    straight, _ = _fit(tmp_path / "a", epochs=3, fptt_backend=fptt_backend)
    _fit(tmp_path / "b", epochs=1, fptt_backend=fptt_backend)
    checkpoint = tmp_path / "b" / "ckpt" / "epoch=0.ckpt"
    assert "fptt" in torch.load(checkpoint, weights_only=True)
    resumed, fit = _fit(tmp_path / "c", epochs=3, ckpt_path=str(checkpoint), fptt_backend=fptt_backend)
    assert resumed.fptt.backend == fptt_backend
    assert fit.global_step == 3 * 8 * 2
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(straight.fptt.running + straight.fptt.trace, resumed.fptt.running + resumed.fptt.trace):
        assert torch.equal(a, b)
