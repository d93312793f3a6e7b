"""The paper's remaining loss, head-initialisation and evaluation details, each against an independent
computation: per-scale normalisation, the clamped BCE, PyTorch's default head init, unseeded membranes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from spikeloc.models.backbones.spyv4 import SPYv4Tiny
from spikeloc.models.detection import YOLOGeometry, YOLOLoss, SpikingYOLO
from tests.models.test_detection_loss import K, SIZES, _raw, _target

REFERENCE = dict(assign="best", ignore_iou=0.5, box_weight=1.0, box_area_weight=True, ciou_alpha_grad=True)
SMALL = [_target([[40, 40, 63, 67]], [1])]  # 23x27: anchor (23, 27) only, in the stride-16 mask only


def _loss(**kwargs) -> YOLOLoss:
    return YOLOLoss(YOLOGeometry.spyv4(scale_xy=1.0, log_wh_clamp=None), num_classes=K, **{**REFERENCE, **kwargs})


def test_per_scale_normalisation_counts_an_empty_scale_as_one():
    raw = _raw(batch=1)
    total, parts = _loss(normalize="positives")(raw, SMALL)
    per_scale_total, per_scale = _loss(normalize="positives_per_scale")(raw, SMALL)
    assert float(parts["num_pos"]) == 1  # one positive at stride 16, none at stride 32
    # the paper: sum over scales of max(positives, 1) = 1 + 1 = 2; spikeloc's "positives": max(1, 1) = 1
    for name in ("box", "obj", "cls"):
        assert float(per_scale[name]) == pytest.approx(float(parts[name]) / 2, rel=1e-6)
    both = [_target([[40, 40, 63, 67], [0, 0, 81, 82]], [1, 2])]  # (81, 82): one positive at each scale
    a, b = _loss(normalize="positives")(raw, both), _loss(normalize="positives_per_scale")(raw, both)
    assert float(a[1]["num_pos"]) == 3 and torch.equal(a[0], b[0])


def _numpy_clamped_bce(logits: np.ndarray, target: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """The paper's BCE in float32: sigmoid, clip to [eps, 1 - eps], -(y log p + (1 - y) log(1 - p))."""
    p = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    p = np.minimum(np.maximum(p, np.float32(eps)), np.float32(1 - eps))
    return -(target * np.log(p) + (1 - target) * np.log(np.float32(1) - p))


def test_clamped_bce_equals_the_float32_formula_and_stops_at_the_clamp():
    logits = torch.tensor([-40.0, -17.0, -3.0, 0.0, 2.5, 16.0, 17.0, 40.0]).repeat(2)
    target = torch.tensor([0.0] * 8 + [1.0] * 8)
    got = _loss(bce_clamp=1e-7).bce(logits, target)
    expected = _numpy_clamped_bce(logits.numpy(), target.numpy())
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=2e-6, atol=1e-6)
    assert float(got[7]) == pytest.approx(-math.log(1 - np.float32(1 - 1e-7)), rel=1e-6)  # 15.94, not 40
    plain = _loss().bce(logits, target)
    assert float(plain[7]) == pytest.approx(40.0) and torch.allclose(got[2:5], plain[2:5], atol=1e-5)  # |logit| < 16: the same
    x = logits.clone().requires_grad_()
    _loss(bce_clamp=1e-7).bce(x, target).sum().backward()
    assert (x.grad[[0, 7, 8, 15]] == 0).all() and (x.grad[[2, 3, 4, 10]] != 0).all()  # clamped: no gradient


def test_clamp_changes_the_loss_only_beyond_the_clamp():
    raw = [r.clamp(-5, 5) for r in _raw(batch=1)]
    clamped, plain = _loss(bce_clamp=1e-7), _loss()
    assert float(clamped(raw, SMALL)[0]) == pytest.approx(float(plain(raw, SMALL)[0]), rel=1e-5)
    raw[1][0, 0, 0, 0, 4] = 60.0  # a background cell (stride 32, no positives) saying "object" at logit 60
    gap = float(plain(raw, SMALL)[1]["obj"]) - float(clamped(raw, SMALL)[1]["obj"])
    assert gap == pytest.approx(60.0 - float(_numpy_clamped_bce(np.array([60.0]), np.array([0.0]))[0]), rel=1e-4)
    with pytest.raises(ValueError, match="bce_clamp"):
        _loss(bce_clamp=0.7)


def _model(**kwargs) -> SpikingYOLO:
    return SpikingYOLO(SPYv4Tiny(num_classes=0, width=0.25), K, init_state="uniform", **kwargs)


def test_default_head_init_keeps_pytorchs_init_while_the_cells_are_xavier():
    torch.manual_seed(0)
    model = _model(weight_init="xavier_normal", head_init="default")
    with torch.no_grad():
        for conv in model.head.convs:  # PyTorch's: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            fan_in, fan_out = conv.in_channels, conv.out_channels
            bound = 1 / math.sqrt(fan_in)
            assert conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
            assert float(conv.weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert float(conv.weight.std()) < 0.8 * math.sqrt(2 / (fan_in + fan_out))  # not Xavier's
            assert float(conv.bias.std()) == pytest.approx(bound / math.sqrt(3), rel=0.35)
        cells = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith("head")]
        for conv in cells:  # the cells stay Xavier-normal (std sqrt(2 / (fan_in + fan_out)))
            receptive = conv.weight[0, 0].numel()
            fan_in, fan_out = conv.in_channels * receptive, conv.out_channels * receptive
            assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.2)
    xavier = _model(weight_init="xavier_normal")
    assert all((conv.bias == 0).all() for conv in xavier.head.convs)
    priors = _model(weight_init="xavier_normal", head_init="priors")
    assert float(priors.head.convs[0].bias.detach().view(3, 5 + K)[0, 4]) == pytest.approx(math.log(8 / (416 / 16) ** 2))
    with pytest.raises(ValueError, match="head init"):
        _model(head_init="zeros")


def test_unseeded_evaluation_draws_from_the_global_rng():
    torch.manual_seed(0)
    model = _model(eval_seed=None).eval()
    x = torch.rand(1, 3, 64, 64)

    def membrane(net: SpikingYOLO) -> torch.Tensor:  # the first cell's membrane after the first step
        with torch.no_grad():
            return net(x, None)[1]["backbone"]["conv1"]["u"]

    torch.manual_seed(5)
    first, second = membrane(model), membrane(model)
    torch.manual_seed(5)
    assert not torch.equal(first, second)  # another draw of the starting membranes
    assert torch.equal(first, membrane(model))  # ... from the global RNG
    seeded = _model(eval_seed=0).eval()
    seeded.load_state_dict(model.state_dict())
    assert torch.equal(membrane(seeded), membrane(seeded))
