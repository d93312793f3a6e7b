"""The non-spiking neurons (ANN twin, LTC read-out) and the new neuron options, against hand-computed cases."""
import pytest
import torch
import torch.nn.functional as F

from spikeloc.neurons import LTCNeuron, SpikingConv2d, get_surrogate, make_neuron
from spikeloc.neurons.modules import ANNNeuron, LTCReadoutNeuron


def test_ann_neuron_is_a_stateless_leaky_relu_ignoring_spiking_arguments():
    neuron = make_neuron("ann", 3, threshold=0.5, surrogate="atan", reset="soft", tau_kernel=5)
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 4.0]])
    y, state = neuron(x, None)
    assert torch.equal(y, torch.tensor([[-0.2, -0.05, 0.0, 0.3, 4.0]]))
    assert state == {}
    y2, _ = neuron(x, state)  # no memory: the same input gives the same output
    assert torch.equal(y, y2)
    assert list(neuron.parameters()) == []


def test_ann_neuron_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="tresh"):
        ANNNeuron(4, tresh=1.0)
    with pytest.raises(ValueError, match="activation"):
        ANNNeuron(4, activation="tanh")


def test_ltc_readout_integrates_without_spiking():
    torch.manual_seed(0)
    neuron = LTCReadoutNeuron(2, threshold=1.0).eval()
    currents = 3 * torch.randn(3, 1, 2, 4, 4)
    u = torch.zeros(1, 2, 4, 4)
    state = None
    for i in currents:
        y, state = neuron(i, state)
        tau = torch.sigmoid(neuron.tau_bn(F.conv2d(i + u, neuron.tau_conv.weight, padding=1)))
        u = u + tau * (i - u)  # no threshold, no reset: values above 1 survive
        assert torch.allclose(y, u, atol=1e-6) and torch.equal(state["u"], y)
    assert (u.abs() > 1).any()


def test_readout_and_spiking_ltc_share_parameter_names():
    assert set(dict(LTCReadoutNeuron(4).named_parameters())) == set(dict(LTCNeuron(4).named_parameters()))


@pytest.mark.parametrize("tau_bias", [2.0, -2.0])
def test_tau_bias_sets_the_initial_time_constant(tau_bias):
    neuron = LTCNeuron(1, tau_bias=tau_bias).eval()  # fresh running stats: BN'(0) = bias
    neuron.tau_conv.weight.data.zero_()
    current = torch.full((1, 1, 2, 2), 1.5)
    spike, state = neuron(current)
    u = torch.sigmoid(torch.tensor(tau_bias)) * 1.5  # u' = tau * i from u = 0: 1.32 or 0.18
    assert torch.equal(spike, torch.full_like(current, float(u > 1.0)))
    assert torch.allclose(state["u"], torch.full_like(current, 0.0 if u > 1.0 else float(u)))


def test_surrogate_from_a_dict():
    surrogate = get_surrogate({"name": "multi_gaussian", "sigma": 0.6, "gamma": 1.0})
    assert (surrogate.sigma, surrogate.gamma) == (0.6, 1.0)
    with pytest.raises(ValueError, match="bad parameters"):
        get_surrogate({"name": "atan", "sigma": 1.0})


def test_print_shows_neuron_settings():
    text = repr(SpikingConv2d(2, 4, neuron="ltc", threshold=0.5, reset="soft", surrogate="atan"))
    assert "threshold=0.5" in text and "reset=soft" in text and "ATan" in text and "tau_kernel=3" in text
    assert "leaky_relu" in repr(SpikingConv2d(2, 4, neuron="ann"))
    assert "decay=0.5" in repr(make_neuron("lif", 4))
