"""A non-spiking YOLOv4-tiny checkpoint (the common PyTorch layout) initialises SPYv4: every tensor arrives.

The ANN below is written from the layout's facts (module names, channels, the CSP block's route of
the second half, concatenation orders, leaky ReLU 0.1); its ``state_dict`` with random values is the
checkpoint. spikeloc's ANN twin (``neuron: ann``) loaded from it computes the same outputs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeloc.models.backbones import SPYv4Tiny, load_pretrained, yolov4_tiny_name
from spikeloc.models.detection import SpikingYOLO
from spikeloc.training.detection import SpikingDetector

CLASSES = 20
OUT = 3 * (5 + CLASSES)


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.leaky_relu(self.bn(self.conv(x)), 0.1)


class ResblockBody(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1, self.conv2 = BasicConv(channels, channels, 3), BasicConv(half, half, 3)
        self.conv3, self.conv4 = BasicConv(half, half, 3), BasicConv(channels, channels, 1)

    def forward(self, x):
        route = self.conv1(x)
        route1 = self.conv2(route[:, route.shape[1] // 2:])
        feat = self.conv4(torch.cat([self.conv3(route1), route1], dim=1))
        return F.max_pool2d(torch.cat([route, feat], dim=1), 2), feat


class CSPDarkNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = BasicConv(3, 32, 3, 2), BasicConv(32, 64, 3, 2)
        self.resblock_body1, self.resblock_body2 = ResblockBody(64), ResblockBody(128)
        self.resblock_body3, self.conv3 = ResblockBody(256), BasicConv(512, 512, 3)

    def forward(self, x):
        x, _ = self.resblock_body2(self.resblock_body1(self.conv2(self.conv1(x)))[0])
        x, feat1 = self.resblock_body3(x)
        return feat1, self.conv3(x)


class Upsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.upsample = nn.Sequential(BasicConv(256, 128, 1), nn.Upsample(scale_factor=2, mode="nearest"))

    def forward(self, x):
        return self.upsample(x)


class YoloBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = CSPDarkNet()
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = nn.Sequential(BasicConv(256, 512, 3), nn.Conv2d(512, OUT, 1))
        self.upsample = Upsample()
        self.yolo_headP4 = nn.Sequential(BasicConv(384, 256, 3), nn.Conv2d(256, OUT, 1))

    def forward(self, x):
        feat1, feat2 = self.backbone(x)
        p5 = self.conv_for_P5(feat2)
        return self.yolo_headP5(p5), self.yolo_headP4(torch.cat([self.upsample(p5), feat1], dim=1))


@pytest.fixture(scope="module")
def ann():
    torch.manual_seed(0)
    model = YoloBody().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, value in model.state_dict().items():  # every tensor a distinct random value
            if key.endswith("running_var") or key.endswith("bn.weight"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif not key.endswith("num_batches_tracked"):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoint(ann, tmp_path_factory):
    path = tmp_path_factory.mktemp("yolov4_tiny") / "yolov4_tiny_weights_voc.pth"
    torch.save(ann.state_dict(), path)
    return path


def _weights(ann) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ann.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_the_layout_has_99_tensors_and_19_counters(ann):
    assert len(_weights(ann)) == 99 and len(ann.state_dict()) == 99 + 19


def test_every_tensor_arrives_in_the_detector(ann, checkpoint):
    torch.manual_seed(2)
    model = SpikingYOLO(SPYv4Tiny(num_classes=0), CLASSES, init_state="uniform", weight_init="xavier_normal")
    report = load_pretrained(model, checkpoint)
    assert len(report.loaded) == 99 and report.layout == "YOLOv4-tiny" and report.counters_skipped == 19
    assert not report.unexpected and not report.mismatched and report.ignored_outside_prefix == 0
    assert all(".neuron." in key or key.endswith("num_batches_tracked") for key in report.missing)
    mine = model.state_dict()
    for key, value in _weights(ann).items():
        assert torch.equal(mine[yolov4_tiny_name(key)], value), key
    assert "99 tensors loaded" in report.summary() and "19 BatchNorm step counters" in report.summary()


def test_backbone_takes_its_75_and_a_backbone_file_loads_too(ann, checkpoint, tmp_path):
    backbone = SPYv4Tiny(num_classes=0)
    report = load_pretrained(backbone, checkpoint)
    assert len(report.loaded) == 75 and report.prefix == "backbone." and report.ignored_outside_prefix == 24
    own = tmp_path / "CSPdarknet53_tiny_backbone_weights.pth"  # the backbone's own file: no "backbone."
    torch.save(ann.backbone.state_dict(), own)
    again = SPYv4Tiny(num_classes=0)
    assert len(load_pretrained(again, own).loaded) == 75
    for key, value in ann.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            name = yolov4_tiny_name(key)
            assert torch.equal(backbone.state_dict()[name], value) and torch.equal(again.state_dict()[name], value)


def test_the_ann_twin_from_the_checkpoint_computes_the_anns_outputs(ann, checkpoint):
    twin = SpikingYOLO(SPYv4Tiny(num_classes=0, neuron="ann"), CLASSES, neuron="ann").eval()
    load_pretrained(twin, checkpoint)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p5, p4 = ann(x)
        (out16, out32), _ = twin(x)
    for theirs, mine in ((p4, out16), (p5, out32)):
        b, _, h, w = theirs.shape
        torch.testing.assert_close(mine, theirs.view(b, 3, 5 + CLASSES, h, w).permute(0, 1, 3, 4, 2),
                                   rtol=1e-4, atol=1e-4)
    assert p4.abs().mean() > 0.1  # a real signal, not vanishing activations


def test_detector_options_pretrained_and_init_from(ann, checkpoint):
    torch.manual_seed(4)
    from_backbone = SpikingDetector(pretrained=str(checkpoint), weight_init="xavier_normal")
    whole = SpikingDetector(init_from=str(checkpoint), weight_init="xavier_normal")
    weights = _weights(ann)
    for key, value in weights.items():
        name = yolov4_tiny_name(key)
        assert torch.equal(whole.model.state_dict()[name], value), name
        assert torch.equal(from_backbone.model.state_dict()[name], value) == name.startswith("backbone."), name
