"""SpikingYOLO neck / head / detector: shapes, explicit state, readouts, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeloc.models.detection import SPYV4_ANCHORS, SpikingYOLO, SpikingYOLONeck, YOLOHead
from spikeloc.neurons import SpikingConv2d, detach_state, map_state, reset_state

K = 3



class TinyBackbone(nn.Module):
    """Stand-in for the backbone contract: pooled input -> one LTC cell per scale."""

    def __init__(self, strides: tuple[int, ...] = (16, 32), channels: tuple[int, ...] = (8, 16)) -> None:
        super().__init__()
        self.strides, self.out_channels = list(strides), list(channels)
        ins = (3, *channels[:-1])
        self.cells = nn.ModuleList(SpikingConv2d(i, o, 3) for i, o in zip(ins, channels))

    def forward(self, x, state=None):
        state = state or [None] * len(self.cells)
        features, new_state, h, prev = [], [], x * 4, 1
        for cell, stride, s in zip(self.cells, self.strides, state):
            h, st = cell(F.avg_pool2d(h, stride // prev), s)
            prev = stride
            features.append(h)
            new_state.append(st)
        return features, new_state


def _leaves(state) -> list[torch.Tensor]:
    out = []
    map_state(lambda t: out.append(t) or t, state)
    return out


def _run(model, x, steps, state=None):
    outs = []
    for _ in range(steps):
        raw, state = model(x, state)
        outs.append(raw)
    return outs, state


@pytest.mark.parametrize("readout", ["last", "leaky", "mean"])
def test_detector_shapes_two_scales_three_steps(readout):
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, readout=readout)
    x = torch.rand(2, 3, 64, 64)
    outs, state = _run(model, x, 3)
    assert [tuple(r.shape) for r in outs[-1]] == [(2, 3, 4, 4, 5 + K), (2, 3, 2, 2, 5 + K)]
    assert set(state) == {"backbone", "neck", "head"}
    assert all(t.shape[0] == 2 for t in _leaves(state))
    assert model.anchors == [[tuple(map(float, a)) for a in scale] for scale in SPYV4_ANCHORS]
    # The state carries memory: step 3 from the carried state differs from a fresh step.
    fresh, _ = model(x, None)
    carried, _ = model(x, state)
    assert not torch.allclose(fresh[0], carried[0])


def test_state_reset_and_detach():
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, readout="leaky").eval()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    _, state = _run(model, x, 2)
    assert all(t.grad_fn is None for t in _leaves(detach_state(state)))
    fresh, _ = model(x, None)
    reset, _ = model(x, reset_state(state, torch.tensor([True, False])))
    assert torch.allclose(reset[0][0], fresh[0][0]) and torch.allclose(reset[1][0], fresh[1][0])
    assert not torch.allclose(reset[0][1], fresh[0][1])


def test_leaky_readout_integrates_last_readout():
    torch.manual_seed(0)
    last = SpikingYOLO(TinyBackbone(), K, readout="last").eval()
    leaky = SpikingYOLO(TinyBackbone(), K, readout="leaky").eval()
    missing = leaky.load_state_dict(last.state_dict(), strict=False).missing_keys
    assert all(key.startswith("head.readouts") for key in missing) and missing
    x = torch.rand(2, 3, 64, 64)
    z, _ = _run(last, x, 3)
    u, _ = _run(leaky, x, 3)
    for scale in range(2):
        tau = torch.sigmoid(leaky.head.readouts[scale].tau_logit).view(3, 5 + K)[None, :, None, None, :]
        expected = torch.zeros_like(z[0][scale])
        for t in range(3):  # u_t = (1 - tau) u_{t-1} + tau z_t
            expected = (1 - tau) * expected + tau * z[t][scale]
            assert torch.allclose(u[t][scale], expected, atol=1e-6)
    assert not torch.allclose(u[2][0], z[2][0])


def test_mean_readout_averages_last_readout_and_resets_per_sample():
    torch.manual_seed(0)
    last = YOLOHead([8, 16], [3, 3], K, readout="last")
    mean = YOLOHead([8, 16], [3, 3], K, readout="mean")
    mean.load_state_dict(last.state_dict())  # no parameters of its own
    features = [[torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)] for _ in range(3)]  # new features every step
    z = [last(f)[0] for f in features]
    m, state = [], None
    for f in features:
        out, state = mean(f, state)
        m.append(out)
    for scale in range(2):
        for t in range(3):  # the plain average of the steps so far
            expected = sum(z[s][scale] for s in range(t + 1)) / (t + 1)
            assert torch.allclose(m[t][scale], expected, atol=1e-6)
    assert not torch.allclose(m[2][0], z[2][0])
    fresh, _ = mean(features[0], None)
    reset, _ = mean(features[0], reset_state(state, torch.tensor([True, False])))
    assert torch.allclose(reset[0][0], fresh[0][0]) and not torch.allclose(reset[0][1], fresh[0][1])


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, readout="leaky")
    outs, _ = _run(model, torch.rand(2, 3, 64, 64), 3)
    sum(r.square().mean() for step in outs for r in step).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_three_scales_and_channel_widths():
    backbone = TinyBackbone(strides=(8, 16, 32), channels=(4, 8, 16))
    anchors = [[(10, 13), (16, 30)], [(30, 61)], [(62, 45), (59, 119), (116, 90)]]
    model = SpikingYOLO(backbone, K, anchors=anchors, neuron="lif")
    outs, _ = _run(model, torch.rand(1, 3, 64, 64), 2)
    assert [tuple(r.shape) for r in outs[-1]] == [(1, 2, 8, 8, 8), (1, 1, 4, 4, 8), (1, 3, 2, 2, 8)]
    assert model.neck.lateral.out_channels == 8 and model.neck.fuse[0].out_channels == 4
    with pytest.raises(ValueError, match="anchors"):
        SpikingYOLO(TinyBackbone(strides=(8, 16, 32), channels=(4, 8, 16)), K)


def test_neck_matches_yolov4_tiny_widths():
    neck = SpikingYOLONeck([256, 512])
    assert (neck.lateral.out_channels, neck.top.out_channels) == (256, 512)
    assert (neck.reduce[0].out_channels, neck.fuse[0].conv.in_channels, neck.fuse[0].out_channels) == (128, 384, 256)
    head = YOLOHead(neck.out_channels, [3, 3], 20, strides=[16, 32], image_size=416)
    assert [c.out_channels for c in head.convs] == [75, 75]
    bias = head.convs[0].bias.view(3, 25)  # objectness prior: ~8 objects over 26 x 26 cells
    assert torch.allclose(bias[:, 4], torch.full((3,), math.log(8 / 26**2)))
    with pytest.raises(ValueError):
        YOLOHead([8], [3], K, readout="sum")


# ---- the reference's options -------------------------------------------------------------------
def test_init_state_uniform_is_seeded_in_eval_and_random_in_training():
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, init_state="uniform").eval()
    x = torch.rand(2, 3, 64, 64)
    neurons = [m for m in model.modules() if hasattr(m, "init_state") and m is not model]
    assert neurons and all(m.init_state == "uniform" for m in neurons)
    first, state = model(x, None)
    u = _leaves(state)
    torch.manual_seed(123)  # whatever ran before, a fresh evaluation sequence draws the same membranes
    again, _ = model(x, None)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))  # ... and leaves the global RNG where it was
    zeros, zero_state = SpikingYOLO(TinyBackbone(), K).eval()(x, None)
    assert not torch.allclose(u[0], _leaves(zero_state)[0])
    model.train()
    trained_a, _ = model(x, None)
    trained_b, _ = model(x, None)
    assert not torch.equal(trained_a[0], trained_b[0])  # training draws fresh membranes every sequence
    # The fresh membrane is U[0, 1): check the distribution on the first backbone cell directly.
    cell = model.backbone.cells[0].neuron
    torch.manual_seed(0)
    drawn = torch.rand(2, 8, 16, 16)
    torch.manual_seed(0)
    current = torch.zeros(2, 8, 16, 16)
    tau = torch.sigmoid(cell.tau_bn(cell.tau_conv(current + drawn)))
    _, new = cell(current, None)
    torch.testing.assert_close(new["u"], (drawn + tau * (current - drawn)) * (drawn + tau * (current - drawn) <= 1))


def test_input_dropout_only_in_training():
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, input_dropout=0.5)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = torch.rand(4, 3, 64, 64) + 0.1
    model.train()(x, None)
    model.eval()(x, None)
    dropped = (seen[0] == 0).all(dim=(2, 3))  # whole channels, the survivors scaled by 1 / (1 - p)
    assert 0 < dropped.float().mean() < 1
    torch.testing.assert_close(seen[0][~dropped], (x * 2)[~dropped])
    torch.testing.assert_close(seen[1], x)


def test_xavier_normal_init_covers_every_conv():
    torch.manual_seed(0)
    model = SpikingYOLO(TinyBackbone(), K, weight_init="xavier_normal")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 2 + 4 * 2 + 2  # backbone and neck cells (conv + tau conv), two heads
    for conv in convs:
        fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        if conv.weight.numel() >= 500:
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.15)
        assert conv.bias is None or (conv.bias == 0).all()  # no head bias priors either
    default = SpikingYOLO(TinyBackbone(), K)
    assert (default.head.convs[0].bias != 0).any()


def test_neck_upsample_order_sets_where_the_neuron_lives():
    x = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    for upsample, size in (("current", (4, 4)), ("spikes", (2, 2))):
        neck = SpikingYOLONeck([8, 16], upsample=upsample)
        outs, state = neck(x)
        assert state["reduce"][0]["u"].shape[-2:] == size
        assert [o.shape for o in outs] == [(2, 8, 4, 4), (2, 16, 2, 2)]
    with pytest.raises(ValueError, match="upsample"):
        SpikingYOLONeck([8, 16], upsample="bilinear")


def test_one_geometry_from_flat_anchors_and_masks():
    flat = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]
    model = SpikingYOLO(TinyBackbone(), K, anchors=flat, anchor_masks=[[1, 2, 3], [3, 4, 5]], scale_xy=1.0,
                        log_wh_clamp=None)
    assert model.geometry.anchors[0] == (10.0, 14.0)
    assert model.anchors == [[(23.0, 27.0), (37.0, 58.0), (81.0, 82.0)], [(81.0, 82.0), (135.0, 169.0), (344.0, 319.0)]]
    assert model.geometry.scale_xy == 1.0 and model.geometry.log_wh_clamp is None
    with pytest.raises(ValueError, match="strides"):
        SpikingYOLO(TinyBackbone(strides=(8, 16, 32), channels=(4, 8, 16)), K)  # SPYv4's anchors need (16, 32)
    with pytest.raises(ValueError, match="masks"):
        SpikingYOLO(TinyBackbone(), K, anchors=flat, anchor_masks=[[1, 2, 6], [3]])
