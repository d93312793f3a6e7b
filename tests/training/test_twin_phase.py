"""ANN->SNN in one run: ``twin_epochs`` trains the network as its ANN twin first, then as the SNN."""
import lightning.pytorch as pl
import pytest
import torch

from spikeloc.neurons import set_twin
from spikeloc.training import FPTTConfig
from .test_detection_module import shapes, tiny_detector
from .tiny import trainer


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
