"""Neuron modules: equal to a plain re-implementation, explicit state, reset and detach."""
import copy

import pytest
import torch
import torch.nn.functional as F

from spikeloc.neurons import (ALIFNeuron, LeakyReadout, LIFNeuron, LTCDense, LTCNeuron, SpikingConv2d,
                              detach_state, reset_state)

torch.manual_seed(0)


def _run(module, inputs, state=None):
    outputs = []
    for x in inputs:
        y, state = module(x, state)
        outputs.append(y)
    return torch.stack(outputs), state


def test_ltc_neuron_matches_equations():
    neuron = LTCNeuron(4).eval()
    currents = 2 * torch.randn(5, 2, 4, 6, 6)
    spikes, _ = _run(neuron, currents)
    u = torch.zeros(2, 4, 6, 6)
    for t, i in enumerate(currents):
        tau = torch.sigmoid(neuron.tau_bn(F.conv2d(i + u, neuron.tau_conv.weight, padding=1)))
        u = u + tau * (i - u)
        s = (u > 1.0).float()
        u = (1 - s) * u
        assert torch.equal(spikes[t], s)


def test_alif_threshold_rises_after_spikes():
    neuron = ALIFNeuron(decay=0.0, rho=0.5, threshold=1.0, scale=1.0)
    drive = torch.full((1, 1), 1.2)
    spikes, _ = _run(neuron, [drive] * 3)
    # t0 fires (theta 1.0); t1: b = 0.5, theta 1.5 > 1.2 no spike; t2: b = 0.25, theta 1.25 > 1.2 no spike
    assert spikes.flatten().tolist() == [1.0, 0.0, 0.0]


def test_ltc_dense_adaptive_recurrent_matches_equations():
    layer = LTCDense(3, 4, recurrent=True, adaptive=True)
    xs = 3 * torch.randn(4, 2, 3)
    spikes, _ = _run(layer, xs)
    u = s = b = torch.zeros(2, 4)
    for t, x in enumerate(xs):
        i = layer.input(x) + layer.recurrent(s)
        tau = torch.sigmoid(layer.tau(torch.cat([i, u], -1)))
        rho = torch.sigmoid(layer.rho(torch.cat([i, b], -1)))
        b = rho * b + (1 - rho) * s
        u = u + tau * (i - u)
        s = (u > 0.1 + 1.8 * b).float()
        u = (1 - s) * u
        assert torch.allclose(spikes[t], s)


MODULES = {
    "ltc": lambda: SpikingConv2d(2, 3, neuron="ltc"),
    "lif": lambda: SpikingConv2d(2, 3, neuron="lif"),
    "alif": lambda: SpikingConv2d(2, 3, neuron="alif"),
    "dense": lambda: LTCDense(2, 3, recurrent=True, adaptive=True),
    "readout": lambda: LeakyReadout(2),
    "lif_free": lambda: LIFNeuron(),
}


def _inputs(name, steps=4):
    shape = (steps, 2, 2) if name in ("dense",) else (steps, 2, 2, 5, 5)
    return 3 * torch.randn(*shape)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_resuming_from_state_equals_one_run(name):
    module = MODULES[name]().eval()
    xs = _inputs(name)
    whole, _ = _run(module, xs)
    first, state = _run(module, xs[:2])
    second, _ = _run(copy.deepcopy(module), xs[2:], state)
    assert torch.equal(torch.cat([first, second]), whole)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_reset_state_equals_fresh_start(name):
    torch.manual_seed(0)  # some neurons must fire: independent of the tests that ran before
    module = MODULES[name]().eval()
    xs = _inputs(name)
    _, state = _run(module, xs[:2])
    state = reset_state(state, torch.tensor([True, False]))
    resumed, _ = _run(module, xs[2:], state)
    fresh, _ = _run(module, xs[2:])
    assert torch.equal(resumed[:, 0], fresh[:, 0])
    assert not torch.equal(resumed[:, 1], fresh[:, 1])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_detach_state_cuts_history(name):
    module = MODULES[name]()
    xs = _inputs(name).requires_grad_(True)
    _, state = _run(module, xs[:2])
    out, _ = _run(module, xs[2:], detach_state(state))
    out.sum().backward()
    assert xs.grad[:2].abs().sum() == 0 and xs.grad[2:].abs().sum() > 0


@pytest.mark.parametrize("name", ["ltc", "lif", "alif", "dense"])
def test_gradient_reaches_every_parameter(name):
    module = MODULES[name]()
    out, _ = _run(module, _inputs(name))
    out.sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
