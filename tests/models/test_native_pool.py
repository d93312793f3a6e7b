"""The native 2x2 max pooling against torch's max_pool2d: bit for bit, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from spikeloc import kernels
from spikeloc.kernels.maxpool import applies, max_pool2x2

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")


def both(x, weights):
    """Output and input gradient of the kernel and of torch for the same input and upstream gradient."""
    results = []
    for pool in (max_pool2x2, lambda t: F.max_pool2d(t, 2)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        out.backward(weights)
        results.append((out, leaf.grad))
    return results


def inputs():
    generator = torch.Generator().manual_seed(0)
    spikes = (torch.rand(2, 3, 8, 10, generator=generator) < 0.3).float()  # ties everywhere
    floats = torch.randn(2, 3, 7, 9, generator=generator)  # odd sizes: the last row and column are left out
    special = torch.randn(1, 2, 6, 6, generator=generator)
    special[0, 0, 0, 1] = special[0, 0, 1, 0] = float("nan")  # two NaNs in one window
    special[0, 0, 2:4, 2:4] = float("-inf")  # a window of -inf
    special[0, 1, 4, 5] = float("inf")
    return [spikes, floats, special, torch.zeros(2, 1, 4, 4), torch.randn(1, 1, 3, 2)]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("threads", [1, 2])
def test_native_pool_equals_torch_bit_for_bit(index, threads):
    x = inputs()[index]
    assert applies(x)
    weights = torch.randn(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2,
                          generator=torch.Generator().manual_seed(index))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (out, grad), (ref_out, ref_grad) = both(x, weights)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.nan_to_num(), ref_out.nan_to_num())
    assert torch.equal(grad, ref_grad)
    if index == 0:  # with ties, torch picks the first largest of each window: the gradient lands there alone
        assert (grad != 0).sum() == weights.numel()


def test_native_pool_falls_back_to_torch():
    x = torch.randn(2, 3, 8, 8)
    assert not applies(x.double()) and not applies(x.contiguous(memory_format=torch.channels_last))
    assert not applies(x.bfloat16()) and not applies(x[0]) and not applies(x[:, :, :1])  # torch: too small
    assert torch.equal(max_pool2x2(x.double()), F.max_pool2d(x.double(), 2))


def test_native_cells_pool_natively(monkeypatch):
    """A CSP block of native cells pools with the kernel; the output equals the module path's."""
    import copy

    from spikeloc.kernels import maxpool
    from spikeloc.models.backbones.spyv4 import CSPBlock
    from spikeloc.neurons.modules import SpikingConv2d
    torch.manual_seed(0)
    block = CSPBlock(4, 8, SpikingConv2d)
    native = copy.deepcopy(block)
    for module in native.modules():
        if hasattr(module, "native"):
            module.native = True
    calls = []
    monkeypatch.setattr(maxpool._MaxPool2, "apply", lambda x, apply=maxpool._MaxPool2.apply: calls.append(1) or apply(x))
    x = 3 * torch.randn(2, 4, 8, 8)
    out, _, _ = native(x)
    ref, _, _ = block(x)
    assert len(calls) == 2 and out.shape == ref.shape and (out - ref).abs().max() < 1e-4 * ref.abs().max()
