"""ANN->SNN in one run: ``twin_epochs`` trains the network as its ANN twin first, then as the SNN."""
import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from spikeloc.neurons import set_twin
from spikeloc.training import FPTTConfig
from spikeloc.training.schedules import PhaseCosineLR
from .test_detection_module import shapes, tiny_detector
from .tiny import QuadrantData, tiny_classifier, trainer


def test_a_network_in_twin_mode_is_its_ann_twin():
    torch.manual_seed(0)
    twin = tiny_detector(neuron="ann", neck_kwargs={"output_neuron": "ltc_readout"}).eval()
    snn = tiny_detector(neck_kwargs={"output_neuron": "ltc_readout"}).eval()
    missing, unexpected = snn.load_state_dict(twin.state_dict(), strict=False)
    assert not unexpected and missing and all(".tau_" in key for key in missing)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, _ = twin.model(x, None)
        spiking, _ = snn.model(x, None)
        assert set_twin(snn, True) == 19  # every LTC cell of backbone and neck
        as_twin, state = snn.model(x, None)
        set_twin(snn, False)
        again, _ = snn.model(x, None)
    for e, s, t, a in zip(expected, spiking, as_twin, again):
        assert torch.equal(t, e)  # the same maths as neuron: ann
        assert not torch.allclose(s, e) and torch.equal(a, s)  # spiking differs, and comes back exactly


def test_twin_epochs_train_the_twin_then_the_snn(tmp_path):
    torch.manual_seed(0)
    module = tiny_detector(num_steps=2, fptt=FPTTConfig(parts=2, consolidate=False), twin_epochs=1)
    calls = []
    forward_step = module.forward_step
    module.forward_step = lambda x, state: calls.append(module.twin_active) or forward_step(x, state)
    tau = {name: p.detach().clone() for name, p in module.named_parameters() if ".tau_" in name}
    seen = {}

    class AfterEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen[trainer.current_epoch] = ({n: p.detach().clone() for n, p in pl_module.named_parameters()
                                            if ".tau_" in n}, list(calls))
            calls.clear()

    data = shapes()
    fit = trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[AfterEpoch()])
    fit.fit(module, datamodule=data)
    twin_tau, twin_calls = seen[0]
    snn_tau, snn_calls = seen[1]
    assert twin_calls == [True] * 2  # 2 batches of one step as the twin
    assert snn_calls == [False] * 4  # then 2 batches of T = 2 spiking steps
    assert all(torch.equal(twin_tau[n], tau[n]) for n in tau)  # the twin never uses the tau-convs
    assert any(not torch.equal(snn_tau[n], tau[n]) for n in tau)  # the SNN trains them
    assert not module.twin_active and fit.global_step == 2 * 1 + 2 * 2  # K = 1 as the twin, K = 2 after


def test_ending_inside_the_twin_phase_warns_and_leaves_the_snn(tmp_path):
    module = tiny_detector(twin_epochs=3)
    with pytest.warns(UserWarning, match="twin phase"):
        trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=shapes())
    assert not module.twin_active
    with pytest.raises(ValueError, match="twin_epochs"):
        tiny_detector(twin_epochs=-1)


@pytest.mark.parametrize("max_epochs, twin", [(3, 2), (6, 4), (1, 1)])
def test_twin_fraction_splits_whatever_max_epochs_is(tmp_path, max_epochs, twin):
    module = tiny_classifier(num_steps=2, twin_fraction=0.6667)
    phases = []

    class AtEpochStart(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            phases.append(pl_module.twin_active)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run that ends in the twin phase warns (tested above)
        trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=0,
                callbacks=[AtEpochStart()]).fit(module, datamodule=QuadrantData())
    assert phases == [True] * twin + [False] * (max_epochs - twin)
    for bad in ({"twin_fraction": 1.0}, {"twin_fraction": -0.1}, {"twin_fraction": 0.5, "twin_epochs": 2}):
        with pytest.raises(ValueError, match="twin_fraction must be in"):
            tiny_classifier(**bad)


def _halving(opt):
    return torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)


def _times_09(opt):
    return torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.9)


def _twin_then_snn(tmp_path, epochs, ckpt_path=None, callbacks=(), twin_scheduler=_halving, scheduler=_times_09):
    """A classifier: 1 twin epoch with its own schedule (lr halves every batch), then spiking (lr x 0.9)."""
    torch.manual_seed(0)
    module = tiny_classifier(num_steps=2, fptt=FPTTConfig(parts=2, consolidate=False), twin_epochs=1,
                             twin_scheduler=twin_scheduler, scheduler=scheduler, scheduler_interval="step")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit = trainer(tmp_path, max_epochs=epochs, limit_val_batches=0, enable_checkpointing=True,
                  callbacks=[checkpoints, *callbacks])
    fit.fit(module, datamodule=QuadrantData(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return module, fit


def test_twin_scheduler_starts_the_spiking_phase_as_a_run_of_its_own(tmp_path):
    seen = []

    class AtBatchStart(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            steps = [int(s["step"]) for s in optimizer.state.values()]
            fresh_fptt = all(torch.equal(r, p) for r, p in zip(pl_module.fptt.running, pl_module.parameters()))
            seen.append((optimizer.param_groups[0]["lr"], max(steps, default=0), fresh_fptt))

    module, fit = _twin_then_snn(tmp_path, epochs=2, callbacks=[AtBatchStart()])
    lrs, adam_steps, fresh = zip(*seen)
    assert lrs == pytest.approx([0.01 * 0.5**b for b in range(8)] + [0.01 * 0.9**b for b in range(8)])
    assert adam_steps[8] == 0 and adam_steps[7] == 7  # the optimizer state starts again at the switch
    assert fresh[8] and not fresh[7]  # so does FPTT's running average (at the twin's weights)
    assert max(int(s["step"]) for s in fit.optimizers[0].state.values()) == 8 * 2  # K = 2 spiking updates


@pytest.mark.parametrize("schedules", [{}, {"twin_scheduler": PhaseCosineLR, "scheduler": PhaseCosineLR}])
def test_resume_across_the_switch_equals_the_uninterrupted_run(tmp_path, schedules):
    straight, _ = _twin_then_snn(tmp_path / "a", epochs=3, **schedules)
    lr = straight.optimizers().param_groups[0]["lr"]
    for epoch in (0, 1):  # a checkpoint of the twin phase, and one of the spiking phase
        checkpoint = tmp_path / "a" / "ckpt" / f"epoch={epoch}.ckpt"
        resumed, _ = _twin_then_snn(tmp_path / f"r{epoch}", epochs=3, ckpt_path=str(checkpoint), **schedules)
        assert resumed.optimizers().param_groups[0]["lr"] == lr
        for p, q in zip(straight.parameters(), resumed.parameters()):
            assert torch.equal(p, q)


@pytest.mark.parametrize("twin_t_max, t_max, expected", [
    (8, 8, []), (5, 8, ["model.init_args.twin_scheduler: CosineAnnealingLR T_max=5, but its phase has 8 scheduler "
                        "steps (1 epoch x 8 batches); set T_max: 8"]),
    (8, 16, ["model.init_args.scheduler: CosineAnnealingLR T_max=16, but its phase has 8 scheduler steps"])])
def test_a_cosine_that_does_not_span_its_phase_is_named(tmp_path, twin_t_max, t_max, expected):
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    module = tiny_classifier(num_steps=2, twin_epochs=1, twin_scheduler=lambda opt: cosine(opt, twin_t_max),
                             scheduler=lambda opt: cosine(opt, t_max), scheduler_interval="step")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(module, datamodule=QuadrantData())
    found = [str(w.message) for w in caught if "CosineAnnealingLR" in str(w.message)]
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected))


def _cosine(lr, steps):
    return [lr * (1 + math.cos(math.pi * b / steps)) / 2 for b in range(steps)]


def test_phase_cosine_sizes_itself_to_each_phase(tmp_path):
    lrs = []

    class AtBatchStart(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _twin_then_snn(tmp_path, epochs=3, callbacks=[AtBatchStart()], twin_scheduler=PhaseCosineLR,
                       scheduler=PhaseCosineLR)
    assert lrs == pytest.approx(_cosine(0.01, 8) + _cosine(0.01, 16))  # 1 twin epoch, then 2 spiking, of 8 batches
    assert not [w for w in caught if "T_max" in str(w.message)]
    lrs.clear()  # one cosine through both phases without twin_scheduler, sized to all 3 epochs
    _twin_then_snn(tmp_path / "one", epochs=3, callbacks=[AtBatchStart()], twin_scheduler=None,
                   scheduler=PhaseCosineLR)
    assert lrs == pytest.approx(_cosine(0.01, 24))


def test_phase_cosine_needs_a_known_length(tmp_path):
    module = tiny_classifier(num_steps=2, scheduler=PhaseCosineLR, scheduler_interval="step")
    with pytest.raises(ValueError, match="model.init_args.scheduler: PhaseCosineLR .*trainer.max_steps=4"):
        trainer(tmp_path, max_epochs=-1, max_steps=4, limit_val_batches=0).fit(module, datamodule=QuadrantData())
    scheduler = PhaseCosineLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    with pytest.raises(RuntimeError, match="sized by the task module"):
        scheduler.step()


def test_phase_cosine_warms_up_over_a_fraction_of_its_phase():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    scheduler = PhaseCosineLR(optimizer, eta_min=0.02, warmup=0.25)
    scheduler.fit_to(10)  # ceil(2.5) = 3 warm-up steps, then a cosine over the other 7
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = [0.02 + 0.18 * (1 + math.cos(math.pi * b / 7)) / 2 for b in range(7)]
    assert lrs == pytest.approx([0.2 / 3, 0.4 / 3, 0.2] + cosine)
    restored = PhaseCosineLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2))
    restored.load_state_dict(scheduler.state_dict())
    assert (restored.warmup, restored.T_max, restored.get_lr()) == (0.25, 10, scheduler.get_lr())
    with pytest.raises(ValueError, match="warmup=1.0: expected a fraction"):
        PhaseCosineLR(optimizer, warmup=1.0)


def test_twin_joint_adds_one_twin_update_per_spiking_batch(tmp_path):
    torch.manual_seed(0)
    module = tiny_detector(num_steps=2, fptt=FPTTConfig(parts=2, consolidate=False), twin_joint=1.0)
    calls = []
    forward_step = module.forward_step
    module.forward_step = lambda x, state: calls.append(module.model.backbone.conv2.neuron.twin) or forward_step(
        x, state)
    fit = trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    fit.fit(module, datamodule=shapes())
    assert calls == [True, False, False] * 2  # a twin pass, then the two spiking steps, per batch
    assert fit.global_step == 2 * 3  # one update more per batch than K = 2
    assert not module.model.backbone.conv2.neuron.twin and not module.twin_active
    assert "train/twin_loss" in fit.callback_metrics


def test_a_twin_pass_keeps_the_batch_norm_statistics():
    from spikeloc.training.time_loop import twin_pass
    torch.manual_seed(0)
    module = tiny_detector(num_steps=2).train()
    before = {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}
    with twin_pass(module):
        assert module.model.backbone.conv2.neuron.twin
        module.model(torch.rand(2, 3, 64, 64), None)
    after = module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not module.model.backbone.conv2.neuron.twin
    module.model(torch.rand(2, 3, 64, 64), None)  # outside the pass the statistics move again
    assert not all(torch.equal(module.state_dict()[k], v) for k, v in before.items())
