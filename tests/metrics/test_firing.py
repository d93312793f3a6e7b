"""FiringStats from the states a step returns: hand-computed SynOps/MACs, rates against the outputs, SynOps
against an independent count of each operation's spike inputs, MACs against torch's counter."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import spikeloc.models.backbones  # noqa: F401  (registers the backbones)
from spikeloc.metrics.firing import ENERGY_AC_PJ, ENERGY_MAC_PJ, FiringStats
from spikeloc.neurons import LIFNeuron


class Toy(nn.Module):
    """One time step: LIF spikes of the input, then a 3x3 convolution of the spikes (and of the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.neuron = LIFNeuron(2, threshold=0.5)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.analog = nn.Conv2d(2, 1, 1, bias=False)

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        spikes, neuron_state = self.neuron(x, None if state is None else state["neuron"])
        return self.conv(spikes) + self.analog(x).sum(), {"neuron": neuron_state}


def run(model: nn.Module, stats: FiringStats, inputs: list[Tensor]) -> list[dict]:
    """One sequence of ``inputs``; the states each step returned."""
    state, states = None, []
    with torch.no_grad():
        for x in inputs:
            _, new_state = model(x, state)
            stats.update(x, state, new_state)
            state = new_state
            states.append(new_state)
    return states


def test_toy_matches_hand_count():
    torch.manual_seed(0)
    model, stats = Toy(), None
    stats = FiringStats(model)
    inputs = [torch.rand(2, 2, 4, 4) for _ in range(2)]
    states = run(model, stats, inputs)
    spikes = sum(float(s["neuron"]["s"].sum()) for s in states)
    result = stats.compute(time_steps=None)
    conv_macs, analog_macs = 3 * 16 * (2 * 9), 1 * 16 * 2  # per sample and step: outputs x fan-in
    assert result["sample_steps"] == 4
    assert result["firing_rate"] == {"neuron": pytest.approx(spikes / (4 * 32))}
    assert result["synops"] == pytest.approx(spikes * 9 * 3 / 2)  # each spike reaches 3 x 9 outputs; per sample
    assert result["synops_per_layer"]["conv"] == pytest.approx(result["synops"])
    assert result["macs"] == pytest.approx(2 * analog_macs) and result["ann_macs"] == 2 * (conv_macs + analog_macs)
    assert result["energy_snn_mj"] == pytest.approx((result["synops"] * ENERGY_AC_PJ + result["macs"] * ENERGY_MAC_PJ)
                                                    * 1e-9)
    assert result["energy_ann_mj"] == pytest.approx(result["ann_macs"] * ENERGY_MAC_PJ * 1e-9)


def test_reset_keeps_the_wiring_and_recounts():
    torch.manual_seed(0)
    model = Toy()
    stats = FiringStats(model)
    inputs = [torch.rand(1, 2, 4, 4)]
    run(model, stats, inputs)
    first = stats.compute()
    wiring = stats.wiring(inputs[0])
    stats.reset()
    assert int(stats.sample_steps) == 0 and float(stats.ops.sum()) == 0
    run(model, stats, inputs)
    assert stats.compute() == first and stats.wiring(inputs[0]) is wiring


def spike_input_count(model: nn.Module, x: Tensor, steps: int) -> dict[str, float]:
    """An independent count: per operation, its binary inputs' nonzeros x MACs / input elements, summed over
    ``steps`` steps of one sequence and divided by the batch (what forward hooks on the eager model see)."""
    counts: dict[str, float] = {}

    def hook(name, module):
        def count(_, inputs, output):
            x = inputs[0]
            if bool(((x == 0) | (x == 1)).all()):
                macs = output.numel() * (module.weight[0].numel())
                counts[name] = counts.get(name, 0.0) + float(torch.count_nonzero(x)) * macs / x.numel() / x.shape[0]
        return count

    handles = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    state = None
    with torch.no_grad():
        for _ in range(steps):
            _, state = model(x, state)
    for handle in handles:
        handle.remove()
    return counts


def test_backbone_rates_synops_and_macs():
    torch.manual_seed(0)
    model = timm.create_model("spyv4_tiny", width=0.125, num_classes=4, out_strides=(8, 16, 32)).eval()
    x, state, spikes = 3 * torch.rand(2, 3, 64, 64), None, []
    stats = FiringStats(model)
    with torch.no_grad():
        for _ in range(2):
            features, new_state = model(x, state)
            stats.update(x, state, new_state)
            state = new_state
            spikes.append(features)
    result = stats.compute(time_steps=None)
    rates = result["firing_rate"]
    assert rates["conv3"] == pytest.approx(torch.stack([s[-1] for s in spikes]).mean().item())
    assert rates["csp3.conv4"] == pytest.approx(torch.stack([s[1] for s in spikes]).mean().item())
    assert 0 < result["mean_firing_rate"] < 1
    synops, reference = result["synops_per_layer"], spike_input_count(model, x, 2)
    assert synops["conv1.conv"] == 0 and synops["conv1.neuron.tau_conv"] == 0  # analog inputs: MACs
    pooled = {"csp2.conv1.conv", "csp3.conv1.conv", "conv3.conv"}  # after max pooling: each spike counts
    for name, value in reference.items():
        if name in pooled:
            assert value <= synops[name] <= 1.5 * value, name
        else:  # fed directly, joined or sliced: exactly the spikes that reach the operation
            assert synops[name] == pytest.approx(value, rel=1e-9), name
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert result["ann_macs"] == 2 * counter.get_total_flops() // 2 // x.shape[0]
    assert result["synops"] + result["macs"] < result["ann_macs"]


def test_update_keeps_counts_on_device(monkeypatch):
    torch.manual_seed(0)
    model = Toy()
    stats = FiringStats(model)
    x = torch.rand(1, 2, 4, 4)
    stats.wiring(x)  # probed once, beforehand

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync in update")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "__float__", "__int__", "__bool__"):
            patch.setattr(Tensor, name, no_sync)
        run(model, stats, [x])
    assert all(state.device == x.device for state in (stats.spikes, stats.ops, stats.sample_steps))
    assert stats.compute()["sample_steps"] == 1


def test_fresh_state_starts_a_sequence():
    torch.manual_seed(0)
    model = timm.create_model("ltc_convnet", channels=(4, 8), num_classes=2)
    stats = FiringStats(model)
    for batch in (2, 3):  # two sequences of T = 3 steps
        run(model, stats, [torch.rand(batch, 1, 16, 16) for _ in range(3)])
    assert (int(stats.sequences), int(stats.sample_steps)) == (5, 15)
    assert stats.compute(time_steps=None) == stats.compute(time_steps=3)
    assert stats.compute(time_steps=None)["synops"] == pytest.approx(3 * stats.compute()["synops"])


def test_the_probe_leaves_the_model_as_it_was():
    """Training mode, backends, batch-norm statistics and the random-number state are untouched."""
    torch.manual_seed(0)
    model = timm.create_model("ltc_convnet", channels=(4, 8), num_classes=2, backend="fused", init_state="uniform")
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state()
    FiringStats(model).wiring(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    assert model.training and all(m.backend == "fused" for m in model.modules() if hasattr(m, "backend"))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())


def test_the_wiring_under_bf16_autocast_matches_float32():
    """Evaluation under bf16-mixed: the probe runs in float32 (its codes are exact there), so the fan-outs are
    those of a float32 run."""
    torch.manual_seed(0)
    model = timm.create_model("ltc_convnet", channels=(4, 8), num_classes=2)
    x = torch.rand(2, 1, 16, 16)
    plain = FiringStats(model).wiring(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = FiringStats(model).wiring(x)
    assert plain.fan_out.abs().sum() > 0 and torch.equal(mixed.fan_out, plain.fan_out)
    assert torch.equal(mixed.macs, plain.macs) and mixed.paths == plain.paths
