"""FiringStats: hand-computed SynOps/MACs, firing rates against the outputs, MACs against torch's counter."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import spikeloc.models.backbones  # noqa: F401  (registers the backbones)
from spikeloc.metrics.firing import ENERGY_AC_PJ, ENERGY_MAC_PJ, FiringStats

CONV_MACS = 3 * 4 * 4 * (2 * 3 * 3)  # outputs per sample x fan-in of Conv2d(2, 3, 3, padding=1) on 4x4


def binary_input(ones_per_sample: tuple[int, ...]) -> Tensor:
    """``[B, 2, 4, 4]`` spikes with the given number of ones in each sample."""
    x = torch.zeros(len(ones_per_sample), 2 * 4 * 4)
    for sample, ones in enumerate(ones_per_sample):
        x[sample, torch.randperm(32)[:ones]] = 1.0
    return x.view(-1, 2, 4, 4)


def test_single_conv_on_spikes_matches_hand_count():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    stats = FiringStats(conv)
    conv(binary_input((8, 16)))       # rates 1/4 and 1/2 -> mean 3/8
    conv(binary_input((0, 24)))       # rates 0 and 3/4 -> mean 3/8
    result = stats.compute()
    assert result["sample_steps"] == 4
    assert result["synops"] == pytest.approx(3 / 8 * CONV_MACS)
    assert result["macs"] == 0 and result["ann_macs"] == CONV_MACS
    assert result["energy_snn_mj"] == pytest.approx(3 / 8 * CONV_MACS * ENERGY_AC_PJ * 1e-9)
    assert result["energy_ann_mj"] == pytest.approx(CONV_MACS * ENERGY_MAC_PJ * 1e-9)
    assert result["energy_ratio"] == pytest.approx(ENERGY_MAC_PJ / (3 / 8 * ENERGY_AC_PJ))
    assert stats.compute(time_steps=4)["synops"] == pytest.approx(4 * 3 / 8 * CONV_MACS)


def test_analog_input_counts_every_mac():
    linear = nn.Linear(6, 5)
    stats = FiringStats(linear)
    linear(torch.rand(3, 6) + 0.5)
    linear(torch.tensor([[0.0, 1.0, 1.0, 0.0, 2.0, 0.0]]))   # one non-binary value makes it analog
    result = stats.compute()
    assert result["synops"] == 0 and result["macs"] == result["ann_macs"] == 30


def test_reset_and_remove():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    stats = FiringStats(conv)
    conv(binary_input((32,)))
    stats.reset()
    assert stats.compute()["synops"] == 0 and stats.compute()["sample_steps"] == 0
    conv(binary_input((32,)))
    assert stats.compute()["synops"] == pytest.approx(CONV_MACS)
    stats.remove()
    conv(binary_input((32,)))
    assert stats.compute()["synops"] == pytest.approx(CONV_MACS) and stats.compute()["sample_steps"] == 1


def test_backbone_rates_match_outputs_and_macs_match_torch_counter():
    torch.manual_seed(0)
    model = timm.create_model("spyv4_tiny", width=0.125, num_classes=4, out_strides=(8, 16, 32)).train()
    x, state, spikes = 3 * torch.randn(2, 3, 64, 64), None, []
    with FiringStats(model) as stats, torch.no_grad():
        for _ in range(2):
            features, state = model(x, state)
            spikes.append(features)
        result = stats.compute()
    rates = result["firing_rate"]
    assert rates["conv3"] == pytest.approx(torch.stack([s[-1] for s in spikes]).mean().item())
    assert rates["csp3.conv4"] == pytest.approx(torch.stack([s[1] for s in spikes]).mean().item())
    assert 0 < result["mean_firing_rate"] < 1
    synops = result["synops_per_layer"]
    assert synops["conv1.conv"] == 0 and synops["conv1.neuron.tau_conv"] == 0    # analog inputs: MACs
    assert synops["conv2.conv"] > 0 and synops["csp3.conv4.conv"] > 0            # spike inputs: SynOps
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert result["ann_macs"] == counter.get_total_flops() // 2 // x.shape[0]
    assert result["synops"] + result["macs"] < result["ann_macs"]


def test_hooks_keep_counts_on_device(monkeypatch):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    stats = FiringStats(conv)

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync in a hook")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "__float__", "__int__", "__bool__"):
            patch.setattr(Tensor, name, no_sync)
        conv(binary_input((4,)))
    assert all(state.device == conv.weight.device for state in (stats.spikes, stats.ops, stats.sample_steps))
    assert stats.compute()["synops"] == pytest.approx(4 / 32 * CONV_MACS)


def test_fresh_state_starts_a_sequence():
    torch.manual_seed(0)
    model = timm.create_model("ltc_convnet", channels=(4, 8), num_classes=2)
    with FiringStats(model) as stats, torch.no_grad():
        for batch in (2, 3):  # two sequences of T = 3 steps
            state = None
            for _ in range(3):
                _, state = model(torch.rand(batch, 1, 16, 16), state)
        assert (int(stats.sequences), int(stats.sample_steps)) == (5, 15)
        assert stats.compute(time_steps=None) == stats.compute(time_steps=3)
        assert stats.compute(time_steps=None)["synops"] == pytest.approx(3 * stats.compute()["synops"])
