"""The ANN twin (``neuron: ann``) of every backbone and of the detector, and ANN -> SNN initialisation."""
from __future__ import annotations

import pytest
import timm
import torch

from spikeloc.models.backbones.pretrained import load_pretrained
from spikeloc.training.detection import SpikingDetector

NAMES = timm.list_models("ltc_*") + timm.list_models("spyv4*")
TAU_PARTS = (".neuron.tau_conv.", ".neuron.tau_bn.")


def _is_tau(key: str) -> bool:
    return any(part in key for part in TAU_PARTS)


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_has_an_ann_twin_with_the_snn_names(name):
    torch.manual_seed(0)
    ann = timm.create_model(name, width=0.125, num_classes=0, in_chans=3, neuron="ann", threshold=0.5)
    snn = timm.create_model(name, width=0.125, num_classes=0, in_chans=3)
    ann_keys, snn_keys = set(ann.state_dict()), set(snn.state_dict())
    assert ann_keys == {key for key in snn_keys if not _is_tau(key)}
    x = torch.rand(2, 3, 64, 64)
    features, state = ann(x)
    again, _ = ann(x, state)
    assert [f.shape for f in features] == [(2, c, 64 // s, 64 // s) for c, s in zip(ann.out_channels, ann.strides)]
    assert all(torch.equal(a, b) for a, b in zip(features, again))  # stateless: no memory between steps
    assert any((f < 0).any() for f in features)  # analog (leaky ReLU), not spikes


def _detector(**kwargs) -> SpikingDetector:
    torch.manual_seed(0)
    return SpikingDetector(num_classes=3, image_size=64, backbone_kwargs={"width": 0.125},
                           anchors=[[(10, 10), (16, 16), (20, 20)], [(24, 24), (32, 32), (40, 40)]], **kwargs)


def test_detector_twin_is_non_spiking_everywhere():
    twin = _detector(neuron="ann", num_steps=1)
    kinds = {type(m).__name__ for m in twin.model.modules() if m.__class__.__name__.endswith("Neuron")}
    assert kinds == {"ANNNeuron"}


def test_snn_starts_from_the_twin_with_only_the_tau_convs_missing(tmp_path):
    twin = _detector(neuron="ann", num_steps=1)
    path = tmp_path / "twin.ckpt"
    torch.save({"state_dict": twin.state_dict()}, path)
    snn = _detector(neck_kwargs={"output_neuron": "ltc_readout"})
    report = load_pretrained(snn.model, path, prefix="model.")
    assert report.missing == sorted(key for key in snn.model.state_dict() if _is_tau(key))
    assert report.missing and not report.unexpected and not report.mismatched
    loaded = snn.model.state_dict()
    for key, value in twin.model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    rebuilt = _detector(init_from=str(path))  # the module option does the same
    assert all(torch.equal(rebuilt.model.state_dict()[k], v) for k, v in twin.model.state_dict().items())


def test_csp_shortcut_adds_the_block_input_spikes_to_conv3_current():
    from functools import partial

    from spikeloc.models.backbones.spyv4 import CSPBlock
    from spikeloc.neurons import SpikingConv2d

    torch.manual_seed(0)
    block = CSPBlock(8, 8, partial(SpikingConv2d, neuron="ltc", threshold=0.5), shortcut=True)  # train-mode BN: currents ~ N(0, 1), so cells fire
    x = (torch.rand(2, 8, 8, 8) > 0.7).float()
    _, t, _ = block(x)
    a, _ = block.conv1(x)
    b1, _ = block.conv2(a[:, 4:])
    b2, _ = block.conv3.neuron(block.conv3.bn(block.conv3.conv(b1)) + b1)  # residual before the spike
    expected, _ = block.conv4(torch.cat([b2, b1], dim=1))
    assert torch.equal(t, expected)
    plain, _ = block.conv3(b1)
    assert not torch.equal(b2, plain)  # the shortcut changes which neurons fire


def test_analog_stem_only_changes_the_first_cell():
    model = timm.create_model("spyv4_tiny", width=0.125, num_classes=0, stem_neuron="ann")
    assert type(model.conv1.neuron).__name__ == "ANNNeuron"
    assert type(model.conv2.neuron).__name__ == "LTCNeuron"
