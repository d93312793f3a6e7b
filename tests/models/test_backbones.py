"""Every registered spiking backbone honours the contract: shapes, gradients, explicit state."""
from __future__ import annotations

import copy
from functools import partial

import pytest
import timm
import torch
from torch import Tensor, nn

import spikeloc.models.backbones as backbones
from spikeloc.neurons import SpikingConv2d, detach_state, map_state, reset_state

NAMES = timm.list_models("ltc_*") + timm.list_models("spyv4*")
SIZE, WIDTH, CLASSES, BATCH = 64, 0.125, 5, 2


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, width=WIDTH, in_chans=3, num_classes=CLASSES, **kwargs)


def frames(steps: int, seed: int = 1, batch: int = BATCH) -> list[Tensor]:
    """``steps`` inputs ``[B, 3, SIZE, SIZE]``, scaled up so the first layer fires."""
    generator = torch.Generator().manual_seed(seed)
    return [3 * torch.randn(batch, 3, SIZE, SIZE, generator=generator) for _ in range(steps)]


def run(model: nn.Module, inputs: list[Tensor], state=None) -> tuple[list[list[Tensor]], object]:
    outputs = []
    for x in inputs:
        features, state = model(x, state)
        outputs.append(features)
    return outputs, state


def leaves(state) -> list[Tensor]:
    found: list[Tensor] = []
    map_state(lambda leaf: found.append(leaf) or leaf, state)
    return found


def calibrated(model: nn.Module) -> nn.Module:
    """Eval-mode model whose BN running stats match the data, so every layer fires."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.momentum = None  # cumulative average
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        run(model, frames(1, seed=7))
    return model.eval()


def test_registry_lists_all_backbones():
    assert set(backbones.BACKBONES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_feature_shapes_match_out_channels_and_strides(name):
    model = build(name)
    features, _ = model(frames(1)[0])
    assert len(features) == len(model.out_channels) == len(model.strides)
    assert list(model.strides) == sorted(set(model.strides))
    for feature, channels, stride in zip(features, model.out_channels, model.strides):
        assert feature.shape == (BATCH, channels, SIZE // stride, SIZE // stride)
        assert set(feature.unique().tolist()) <= {0.0, 1.0}, "features must be spikes"
    assert model.num_classes == CLASSES
    assert model.forward_head(features).shape == (BATCH, CLASSES)
    model.reset_classifier(0)
    assert model.forward_head(features).shape == (BATCH, model.out_channels[-1])


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    model = build(name).train()
    outputs, _ = run(model, frames(2))
    assert outputs[-1][-1].sum() > 0, "deepest layer must spike for the test to mean something"
    loss = sum(sum(f.sum() for f in features) + model.forward_head(features).sum() for features in outputs)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"


@pytest.mark.parametrize("name", NAMES)
def test_no_hidden_memory_stepping_equals_fresh_copy(name):
    """Interleaving an unrelated sequence changes nothing: all memory is in the explicit state."""
    model = calibrated(build(name))
    reference = copy.deepcopy(model)
    inputs, distractors = frames(2), frames(2, seed=99)
    with torch.no_grad():
        expected, _ = run(reference, inputs)
        state, other_state = None, None
        for step, (x, noise) in enumerate(zip(inputs, distractors)):
            _, other_state = model(noise, other_state)
            features, state = model(x, state)
            for got, want in zip(features, expected[step]):
                assert torch.equal(got, want), f"step {step} differs"
    assert sum(f.sum() for f in expected[-1]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_reset_state_mask_restarts_that_sample(name):
    model = calibrated(build(name))
    first, last = frames(2), frames(1, seed=5)[0]
    with torch.no_grad():
        _, state = run(model, first)
        assert leaves(state) and all(leaf.shape[0] == BATCH for leaf in leaves(state)), "state must be batch-first"
        mask = torch.tensor([True, False])
        reset, _ = model(last, reset_state(state, mask))
        fresh, _ = model(last, None)
        continued, _ = model(last, state)
    for got, new, old in zip(reset, fresh, continued):
        assert torch.equal(got[0], new[0]) and torch.equal(got[1], old[1])
    assert any(not torch.equal(new[0], old[0]) for new, old in zip(fresh, continued)), "history must matter"


@pytest.mark.parametrize("name", NAMES)
def test_detach_state_cuts_the_graph(name):
    model = build(name).train()
    first, second = frames(2)
    for detach, reaches_first_input in ((False, True), (True, False)):
        x = first.clone().requires_grad_(True)
        _, state = model(x)
        if detach:
            state = detach_state(state)
            assert all(leaf.grad_fn is None and not leaf.requires_grad for leaf in leaves(state))
        features, _ = model(second, state)
        (sum(f.sum() for f in features) + model.forward_head(features).sum()).backward()
        assert (x.grad is not None) == reaches_first_input


def test_out_strides_select_features():
    spy = timm.create_model("spyv4_tiny", width=WIDTH, out_strides=(8, 16, 32))
    features, _ = spy(frames(1)[0])
    assert spy.strides == [8, 16, 32] and [f.shape[-1] for f in features] == [8, 4, 2]
    shallow = timm.create_model("ltc_resnet18", width=WIDTH, out_strides=(8,))
    assert not hasattr(shallow, "layer3") and shallow.out_channels == [16]
    with pytest.raises(ValueError, match="out_strides"):
        timm.create_model("spyv4_tiny", out_strides=(4,))


# parameters at width 1.0 (incl. the 1000-class fc); the README table quotes these
PARAMETERS = {"ltc_resnet18": 24_267_944, "ltc_resnet34": 44_484_264, "ltc_resnet50": 229_349_800,
              "spyv4_tiny": 8_487_368}
CHANNELS = {"ltc_resnet18": [128, 256, 512], "ltc_resnet34": [128, 256, 512], "ltc_resnet50": [512, 1024, 2048],
            "spyv4_tiny": [256, 512]}


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_full_width_architecture(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    assert model.out_channels == CHANNELS[name]


def test_spyv4_csp_block_layout():
    """YOLOv4-tiny CSP block: 3x3 C, half -> 3x3 C/2 -> 3x3 C/2, concat, 1x1 C, concat, pool -> 2C."""
    block = backbones.CSPBlock(16, 16, SpikingConv2d)
    shapes = [(cell.conv.in_channels, cell.conv.out_channels, cell.conv.kernel_size[0])
              for cell in (block.conv1, block.conv2, block.conv3, block.conv4)]
    assert shapes == [(16, 16, 3), (8, 8, 3), (8, 8, 3), (16, 16, 1)]
    x = (4 * torch.randn(1, 16, 8, 8)).requires_grad_()
    out, transition, _ = block(x)
    assert out.shape == (1, 32, 4, 4) and transition.shape == (1, 16, 8, 8)
    first, _ = block.conv1(x)  # the output is maxpool2x2 of [conv1's spikes, t], forward and backward
    reference = torch.nn.functional.max_pool2d(torch.cat([first, transition], dim=1), 2)
    assert torch.equal(out, reference) and 0 < reference.sum() < reference.numel()
    weights = torch.randn(out.shape)
    grads = [torch.autograd.grad((y * weights).sum(), x, retain_graph=True)[0] for y in (out, reference)]
    assert torch.allclose(*grads, atol=1e-6) and grads[0].abs().sum() > 0  # summed in another order


@pytest.mark.parametrize("block_cls", [backbones.BasicBlock, backbones.Bottleneck])
def test_residual_joins_the_synaptic_current(block_cls):
    """Silence the residual branch and make tau ~ 1: the last cell's current is the identity
    shortcut alone, so the block passes its input spikes through unchanged (and stays binary)."""
    channels = 16
    cell = partial(SpikingConv2d, threshold=0.5)
    block = block_cls(channels, channels // block_cls.expansion, 1, cell).eval()
    last = block.conv3 if block_cls is backbones.Bottleneck else block.conv2
    assert block.downsample is None
    with torch.no_grad():
        last.conv.weight.zero_()
        last.neuron.tau_bn.bias.fill_(30.0)
        spikes = (torch.rand(2, channels, 8, 8) < 0.3).float()
        out, _ = block(spikes)
    assert torch.equal(out, spikes)


@pytest.mark.parametrize("name", backbones.BACKBONES)
@pytest.mark.parametrize("neuron", ["lif", "alif"])
def test_baseline_neurons_and_kwargs_reach_every_cell(name, neuron):
    model = build(name, neuron=neuron, threshold=0.7, surrogate="atan", reset="soft")
    cells = [m for m in model.modules() if isinstance(m, SpikingConv2d)]
    assert cells and all(type(c.neuron).__name__ == f"{neuron.upper()}Neuron" for c in cells)
    assert all(c.neuron.threshold == 0.7 and c.neuron.reset == "soft" for c in cells)
    outputs, state = run(model, frames(2))
    assert [f.shape[1] for f in outputs[-1]] == model.out_channels
    assert all(leaf.shape[0] == BATCH for leaf in leaves(state))


@pytest.mark.parametrize("name", ["spyv4_tiny", "ltc_resnet18"])
def test_features_only_gives_the_backbone_with_feature_info(name):
    model = timm.create_model(name, features_only=True, width=0.125)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
    assert model.feature_info.channels() == model.out_channels
    assert model.feature_info.reduction() == model.strides
    features, _ = model(torch.rand(1, 3, 64, 64))
    assert [f.shape[1:] for f in features] == [(c, 64 // s, 64 // s) for c, s in zip(model.out_channels, model.strides)]
    deepest = timm.create_model(name, features_only=True, out_indices=(-1,), width=0.125)
    assert deepest.feature_info.reduction() == [32]


def test_importing_spikeloc_registers_every_model():
    import subprocess
    import sys
    code = "import timm, spikeloc; print(sorted(timm.list_models(['ltc_*', 'spyv4*', 'srnn*'])))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["ltc_convnet", "ltc_resnet18", "ltc_resnet34", "ltc_resnet50", "spyv4_tiny", "srnn_ltc"]
