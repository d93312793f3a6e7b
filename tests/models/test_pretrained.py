"""Pretrained loading: timm round trips, ANN ResNet weights, Lightning checkpoints, clear errors."""
from __future__ import annotations

import pickle

import pytest
import timm
import torch
from torch import nn

import spikeloc.models.backbones  # noqa: F401  (registers the backbones)
from spikeloc.models.backbones import ann_to_cell_key, load_pretrained

NAMES = timm.list_models("ltc_*") + timm.list_models("spyv4*")
WIDTH, CLASSES = 0.125, 10


def build(name: str, seed: int, num_classes: int = CLASSES, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, width=WIDTH, in_chans=3, num_classes=num_classes, **kwargs)


def scramble_buffers(model: nn.Module) -> nn.Module:
    """Give BN running stats non-default values so a round trip that skips buffers fails."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model


def assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    unequal = [key for key in want if not torch.equal(got[key], want[key])]
    assert not unequal, f"tensors differ: {unequal[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_timm_create_model_round_trips_a_local_file(name, tmp_path):
    source = scramble_buffers(build(name, seed=0))
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build(name, seed=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_tensors(loaded.state_dict(), source.state_dict())


@pytest.mark.parametrize("name", spikeloc.models.backbones.BACKBONES)
def test_timm_loads_a_lightning_checkpoint(name, tmp_path):
    source = scramble_buffers(build(name, seed=0, num_classes=3))
    state = {f"model.backbone.{key}": value for key, value in source.state_dict().items()}
    state["model.head.conv.weight"] = torch.zeros(3, 3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 4, "global_step": 100}, path)
    loaded = build(name, seed=1, num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_tensors(loaded.state_dict(), source.state_dict())


def test_no_local_file_means_no_weights():
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("ltc_resnet18", width=WIDTH, pretrained=True)


@pytest.fixture(scope="module")
def ann_resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    ann = scramble_buffers(timm.create_model("resnet18"))
    path = tmp_path_factory.mktemp("ann") / "resnet18.pth"
    torch.save(ann.state_dict(), path)
    return path, ann.state_dict()


@pytest.mark.parametrize("classes", [1000, 7])
def test_ann_resnet18_initialises_ltc_resnet18(ann_resnet18_file, classes):
    path, ann = ann_resnet18_file
    model = timm.create_model("ltc_resnet18", num_classes=classes)
    report = load_pretrained(model, path)
    head = ["fc.bias", "fc.weight"] if classes != 1000 else []
    tau_keys = sorted(k for k in model.state_dict() if ".tau_" in k)
    assert report.missing == sorted(tau_keys + head)
    assert report.unexpected == [] and report.mismatched == []
    assert report.renamed_from_ann == len(ann) - 2 - 6 * 3  # all but fc and the 3 downsample conv+bn sets
    snn = model.state_dict()
    for ann_key, snn_key in [("conv1.weight", "conv1.conv.weight"), ("bn1.running_var", "conv1.bn.running_var"),
                             ("layer3.1.conv2.weight", "layer3.1.conv2.conv.weight"),
                             ("layer4.0.bn1.bias", "layer4.0.conv1.bn.bias"),
                             ("layer2.0.downsample.0.weight", "layer2.0.downsample.0.weight"),
                             ("layer2.0.downsample.1.running_mean", "layer2.0.downsample.1.running_mean")]:
        assert torch.equal(snn[snn_key], ann[ann_key]), snn_key
    if classes == 1000:
        assert torch.equal(snn["fc.weight"], ann["fc.weight"])


def test_ann_resnet18_through_timm(ann_resnet18_file):
    path, ann = ann_resnet18_file
    model = timm.create_model("ltc_resnet18", num_classes=4, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.layer1[0].conv2.bn.weight, ann["layer1.0.bn2.weight"])
    assert model.fc.weight.shape == (4, 512)


def test_lightning_prefix_is_detected_and_can_be_forced(tmp_path):
    source = scramble_buffers(build("spyv4_tiny", seed=0))
    path = tmp_path / "epoch=1.ckpt"
    state = {f"net.{key}": value for key, value in source.state_dict().items()}
    state |= {"net_ema.conv1.conv.weight": torch.zeros(1), "loss.weight": torch.ones(2)}
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 0.1}}, path)
    for prefix in (None, "net."):
        model = build("spyv4_tiny", seed=1)
        report = load_pretrained(model, path, prefix=prefix)
        assert report.prefix == "net." and report.ignored_outside_prefix == 2 and report.missing == []
        assert_same_tensors(model.state_dict(), source.state_dict())


def test_shape_mismatch_names_the_key(tmp_path):
    source = build("ltc_resnet18", seed=0).state_dict()
    source["layer2.0.conv1.conv.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(source, path)
    model = build("ltc_resnet18", seed=1)
    before = model.layer2[0].conv1.conv.weight.clone()
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.conv\.weight: checkpoint \(3, 3, 3, 3\) vs model"):
        load_pretrained(model, path)
    report = load_pretrained(model, path, strict_shapes=False)
    assert [key for key, _, _ in report.mismatched] == ["layer2.0.conv1.conv.weight"]
    assert torch.equal(model.layer2[0].conv1.conv.weight, before)
    assert torch.equal(model.layer1[0].conv1.conv.weight, source["layer1.0.conv1.conv.weight"])


def test_classifier_of_other_size_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "head.pth"
    torch.save(build("spyv4_tiny", seed=0, num_classes=3).state_dict(), path)
    report = load_pretrained(build("spyv4_tiny", seed=1, num_classes=8), path)
    assert report.head_skipped == ["fc.bias", "fc.weight"] and report.missing == ["fc.bias", "fc.weight"]


def test_unrelated_checkpoint_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no checkpoint key matches"):
        load_pretrained(build("spyv4_tiny", seed=0), path)


class NotAWeight:
    pass


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": build("spyv4_tiny", seed=0).state_dict(), "callback": NotAWeight()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained(build("spyv4_tiny", seed=1), path)


def test_ann_key_mapping():
    assert ann_to_cell_key("conv1.weight") == "conv1.conv.weight"
    assert ann_to_cell_key("bn1.num_batches_tracked") == "conv1.bn.num_batches_tracked"
    assert ann_to_cell_key("layer1.0.bn2.running_mean") == "layer1.0.conv2.bn.running_mean"
    assert ann_to_cell_key("layer1.0.downsample.1.weight") == "layer1.0.downsample.1.weight"
    assert ann_to_cell_key("layer1.0.conv1.conv.weight") == "layer1.0.conv1.conv.weight"


def test_timm_adapts_the_stem_and_resets_the_head(tmp_path):
    rgb = scramble_buffers(build("ltc_resnet18", seed=0, num_classes=7))
    torch.save({"state_dict": {f"net.{k}": v for k, v in rgb.state_dict().items()}}, tmp_path / "rgb.ckpt")
    torch.manual_seed(1)
    gray = timm.create_model("ltc_resnet18", pretrained=True, in_chans=1, num_classes=CLASSES, width=WIDTH,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "rgb.ckpt")))
    stem = rgb.conv1.conv.weight
    assert torch.allclose(gray.conv1.conv.weight, stem.sum(dim=1, keepdim=True))  # timm's rule for 1 channel
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(gray.conv1.conv(x), rgb.conv1.conv(x.expand(2, 3, 32, 32)), atol=1e-5)
    assert gray.fc.out_features == CLASSES  # a fresh head: the file's has 7 classes
    same = {k: v for k, v in gray.state_dict().items() if not k.startswith(("fc.", "conv1.conv."))}
    assert_same_tensors(same, {k: v for k, v in rgb.state_dict().items() if k in same})
    assert gray.pretrained_cfg["input_size"][0] == 3 and gray.pretrained_cfg["num_classes"] == 7  # the file's
