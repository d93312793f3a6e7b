"""The strided convolution with a channels-last input gradient against torch's convolution."""
import pytest
import torch
from torch import nn

from spikeloc import kernels
from spikeloc.kernels import strided_conv
from spikeloc.neurons.layers import SpikingConv2d

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")


@pytest.mark.parametrize("shape", [(2, 32, 13, 11), (1, 3, 1, 70), (3, 17, 9, 8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_layout_change_equals_torch(shape, threads, monkeypatch):
    """Channel counts and plane sizes that are not multiples of the kernel's tiles, on one and two threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        out = torch.ops.spikeloc.nhwc_to_nchw(x)
    finally:
        torch.set_num_threads(previous)
    assert out.is_contiguous() and torch.equal(out, x.contiguous())


@pytest.mark.parametrize("settings", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1, stride=2),
                                      dict(kernel_size=3, stride=(2, 1), padding=1, groups=2),
                                      dict(kernel_size=3, stride=2, padding=2, dilation=2)])
def test_strided_conv_equals_torch(settings):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, bias=False, **settings)
    x = torch.randn(2, 8, 15, 14, requires_grad=True)
    assert strided_conv.applies(conv, x)
    upstream = torch.randn_like(conv(x))
    results = []
    for run in (lambda: strided_conv.conv2d(conv, x), lambda: conv(x)):
        x.grad = conv.weight.grad = None
        out = run()
        out.backward(upstream)
        results.append((out, x.grad, conv.weight.grad))
    (out, grad_x, grad_w), (ref_out, ref_x, ref_w) = results
    assert torch.equal(out, ref_out) and torch.equal(grad_w, ref_w)  # the same calls as torch's
    assert grad_x.is_contiguous()
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-5, atol=1e-5)


def test_only_strided_convolutions_needing_an_input_gradient():
    conv, x = nn.Conv2d(4, 4, 3, stride=2, bias=False), torch.randn(1, 4, 8, 8)
    assert not strided_conv.applies(conv, x)  # no input gradient to compute: the plain convolution
    assert not strided_conv.applies(nn.Conv2d(4, 4, 3, bias=False), x.requires_grad_())
    assert not strided_conv.applies(nn.Conv2d(4, 4, 3, stride=2), x)  # a bias
    assert not strided_conv.applies(conv, x.double())
    assert strided_conv.applies(conv, x)


def test_kernel_strided_cell_matches_the_eager_modules(monkeypatch):
    """A ``cpu_kernels`` LTC cell of stride 2 (its convolution through :func:`strided_conv.conv2d`) against the
    same cell run eager."""
    calls = []
    apply = strided_conv._StridedConv.apply
    monkeypatch.setattr(strided_conv._StridedConv, "apply", lambda *args: calls.append(1) or apply(*args))
    torch.manual_seed(0)
    cells = [SpikingConv2d(6, 8, 3, stride=2, backend=backend) for backend in ("cpu_kernels", "eager")]
    cells[1].load_state_dict(cells[0].state_dict())
    x, u = torch.randn(2, 6, 12, 12), torch.rand(2, 8, 6, 6)
    grads = []
    for cell in cells:
        leaf = x.clone().requires_grad_()
        spike, state = cell(leaf, {"u": u})
        (spike * torch.linspace(0, 1, spike.numel()).view_as(spike)).sum().add(state["u"].square().sum()).backward()
        grads.append((leaf.grad, cell.conv.weight.grad))
    assert len(calls) == 1  # the kernel cell's
    for kernel, eager in zip(*grads):
        torch.testing.assert_close(kernel, eager, rtol=1e-4, atol=1e-5)


def test_the_layout_change_shows_in_the_profiler():
    conv, x = nn.Conv2d(4, 6, 3, stride=2, bias=False), torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        strided_conv.conv2d(conv, x).sum().backward()
    assert "spikeloc::nhwc_to_nchw" in {event.name for event in profiler.events()}
