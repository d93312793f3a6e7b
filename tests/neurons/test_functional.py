"""Neuron step functions against hand-computed steps."""
import pytest
import torch

from spikeloc.neurons import (MultiGaussian, adaptive_threshold, lif_step, ltc_step, readout_step,
                              reset_membrane)

SG = MultiGaussian()


def test_ltc_step_hand_computed():
    current = torch.tensor([2.0, 0.5, 3.0])
    u = torch.tensor([0.5, 0.2, 0.0])
    tau = torch.tensor([0.5, 0.5, 0.25])
    # u' = u + tau (i - u) = [1.25, 0.35, 0.75]; threshold 1 -> spikes [1, 0, 0]
    spike, u_next = ltc_step(current, u, tau, 1.0, SG, "hard")
    assert spike.tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(u_next, torch.tensor([0.0, 0.35, 0.75]))
    _, u_soft = ltc_step(current, u, tau, 1.0, SG, "soft")
    assert torch.allclose(u_soft, torch.tensor([0.25, 0.35, 0.75]))


def test_lif_step_hand_computed():
    spike, u = lif_step(torch.tensor([0.6, 0.3]), torch.tensor([1.0, 0.4]), 0.5, 1.0, SG)
    # u' = 0.5 u + i = [1.1, 0.5]
    assert spike.tolist() == [1.0, 0.0]
    assert torch.allclose(u, torch.tensor([0.0, 0.5]))


def test_threshold_is_strict():
    spike, _ = lif_step(torch.tensor([1.0]), torch.tensor([0.0]), 0.5, 1.0, SG)
    assert spike.item() == 0.0  # H(0) = 0: exactly at threshold does not fire


def test_adaptive_threshold_hand_computed():
    theta, b = adaptive_threshold(torch.tensor([0.5]), torch.tensor([1.0]), 0.8)
    # b' = 0.8*0.5 + 0.2*1 = 0.6; theta = 0.1 + 1.8*0.6 = 1.18
    assert torch.allclose(b, torch.tensor([0.6]))
    assert torch.allclose(theta, torch.tensor([1.18]))


def test_readout_step_hand_computed():
    assert torch.allclose(readout_step(torch.tensor([2.0]), torch.tensor([1.0]), 0.25), torch.tensor([1.25]))


def test_reset_rejects_unknown_mode():
    with pytest.raises(ValueError, match="reset must be"):
        reset_membrane(torch.zeros(1), torch.zeros(1), 1.0, "none")
