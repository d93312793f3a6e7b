"""SPYv4 against a step-by-step re-computation in the reference code's order of operations.

Same weights, same initial membranes: the re-computation below is written from the paper's
description (conv, BN, tau-conv LTC-SN cells; CSPDarknet-tiny; the neck's 1x1 cell upsampling its
current before its neuron; non-spiking 1x1 heads read at every step) with plain torch functions.
The model is built with the reference's options, the heads' PyTorch default init (biases) included.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeloc.models.backbones.spyv4 import SPYv4Tiny
from spikeloc.models.detection import SpikingYOLO
from spikeloc.neurons import map_state

K, SIZE, STEPS = 3, 64, 3


def _bn(x, bn: nn.BatchNorm2d):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def ref_cell(cell, x, u, upsample_to=None):
    """LTC-SN cell: i = BN(conv(x)) [-> nearest upsample]; tau = sigmoid(BN'(conv3x3(i + u)));
    u' = u + tau (i - u); s = [u' > 1]; u = (1 - s) u'."""
    conv = cell.conv
    i = _bn(F.conv2d(x, conv.weight, None, conv.stride, conv.padding), cell.bn)
    if upsample_to is not None:
        i = F.interpolate(i, size=upsample_to, mode="nearest")
    neuron = cell.neuron
    tau = torch.sigmoid(_bn(F.conv2d(i + u, neuron.tau_conv.weight, None, 1, neuron.tau_conv.padding), neuron.tau_bn))
    u = u + tau * (i - u)
    s = (u > 1.0).to(u.dtype)
    return s, (1 - s) * u


def ref_csp(block, x, u):
    a, u["conv1"]["u"] = ref_cell(block.conv1, x, u["conv1"]["u"])
    b1, u["conv2"]["u"] = ref_cell(block.conv2, a[:, a.shape[1] // 2:], u["conv2"]["u"])
    b2, u["conv3"]["u"] = ref_cell(block.conv3, b1, u["conv3"]["u"])
    t, u["conv4"]["u"] = ref_cell(block.conv4, torch.cat([b2, b1], 1), u["conv4"]["u"])
    return F.max_pool2d(torch.cat([a, t], 1), 2, 2), t


def ref_step(model: SpikingYOLO, x, u):
    """One step of SPYv4; ``u`` (nested like spikeloc's state) is updated in place."""
    bb, neck, head = model.backbone, model.neck, model.head
    ub, un = u["backbone"], u["neck"]
    h, ub["conv1"]["u"] = ref_cell(bb.conv1, x, ub["conv1"]["u"])
    h, ub["conv2"]["u"] = ref_cell(bb.conv2, h, ub["conv2"]["u"])
    h, _ = ref_csp(bb.csp1, h, ub["csp1"])
    h, _ = ref_csp(bb.csp2, h, ub["csp2"])
    h, feat16 = ref_csp(bb.csp3, h, ub["csp3"])
    feat32, ub["conv3"]["u"] = ref_cell(bb.conv3, h, ub["conv3"]["u"])
    p5, un["lateral"]["u"] = ref_cell(neck.lateral, feat32, un["lateral"]["u"])
    out32, un["top"]["u"] = ref_cell(neck.top, p5, un["top"]["u"])
    up, un["reduce"][0]["u"] = ref_cell(neck.reduce[0], p5, un["reduce"][0]["u"], upsample_to=feat16.shape[-2:])
    out16, un["fuse"][0]["u"] = ref_cell(neck.fuse[0], torch.cat([up, feat16], 1), un["fuse"][0]["u"])
    outs = []
    for feature, conv in zip((out16, out32), head.convs):
        z = F.conv2d(feature, conv.weight, conv.bias)
        outs.append(z.view(z.shape[0], 3, 5 + K, *z.shape[-2:]).permute(0, 1, 3, 4, 2))
    return outs, float(out16.mean() + out32.mean())


def _model(upsample: str) -> SpikingYOLO:
    torch.manual_seed(0)
    model = SpikingYOLO(SPYv4Tiny(num_classes=0, width=0.25), K, neck_upsample=upsample, init_state="uniform",
                        weight_init="xavier_normal", head_init="default", eval_seed=None,
                        scale_xy=1.0, log_wh_clamp=None).double().eval()
    assert all((conv.bias != 0).all() for conv in model.head.convs)
    with torch.no_grad():  # a livelier operating point than fresh BN statistics, so spikes do fire
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(0.0, 1.6)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model


def _initial_state(model: SpikingYOLO, x):
    _, state = model(x, None)  # its structure; every membrane then redrawn from a fixed generator
    gen = torch.Generator().manual_seed(1)
    return map_state(lambda t: torch.rand(t.shape, generator=gen, dtype=t.dtype), state)


@pytest.mark.parametrize("upsample", ["current", "spikes"])
def test_spyv4_equals_reference_order(upsample):
    model = _model(upsample)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    with torch.no_grad():
        state0 = _initial_state(_model("current"), x)  # membranes at the reference's sizes
        ref_u = map_state(torch.clone, state0)
        state, firing = state0, 0.0
        for t in range(STEPS):
            ref, rate = ref_step(model, x, ref_u)
            firing += rate
            if upsample == "spikes" and t == 0:  # its 1x1 neuron lives at the coarse size
                state = {**state, "neck": {**state["neck"], "reduce": [
                    {"u": F.avg_pool2d(state["neck"]["reduce"][0]["u"], 2)}]}}
            out, state = model(x, state)
            same16 = torch.allclose(out[0], ref[0], rtol=0, atol=1e-10)
            if upsample == "current":
                assert same16, f"stride-16 output differs at step {t}"
                torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-10)
    assert 0.02 < firing / STEPS < 0.98  # the neck's outputs are neither silent nor saturated
    if upsample == "spikes":  # the other order is a different network at stride 16 only
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-10)
        assert not same16
