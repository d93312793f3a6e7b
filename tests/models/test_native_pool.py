"""The native 2x2 max pooling (and join) against torch's max_pool2d and cat: bit for bit, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from spikeloc import kernels
from spikeloc.kernels.maxpool import applies, max_pool2x2_cat

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")


def both(xs, weights):
    """Output and input gradients of the kernel and of torch for the same inputs and upstream gradient."""
    results = []
    for pool in (max_pool2x2_cat, lambda ts: torch.cat([F.max_pool2d(t, 2) for t in ts], 1)):
        leaves = [x.clone().requires_grad_() for x in xs]
        out = pool(leaves)
        out.backward(weights)
        results.append((out, *(leaf.grad for leaf in leaves)))
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


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("threads", [1, 2])
def test_native_pool_equals_torch_bit_for_bit(index, threads):
    """Each input alone, and (index 5) two inputs of different channel counts joined."""
    xs = [inputs()[index]] if index < 5 else [inputs()[1], torch.randn(2, 5, 7, 9)]
    assert all(applies(x) for x in xs)
    x = xs[0]
    channels = sum(t.shape[1] for t in xs)
    weights = torch.randn(x.shape[0], channels, x.shape[2] // 2, x.shape[3] // 2,
                          generator=torch.Generator().manual_seed(index))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (out, *grads), (ref_out, *ref_grads) = both(xs, weights)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.nan_to_num(), ref_out.nan_to_num())
    assert all(torch.equal(grad, ref) for grad, ref in zip(grads, ref_grads))
    if index == 0:  # with ties, torch picks the first largest of each window: the gradient lands there alone
        assert (grads[0] != 0).sum() == weights.numel()


def test_native_join_of_an_input_without_gradient():
    a, b = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(2, 4, 6, 6)
    out = max_pool2x2_cat([a, b])
    out.backward(torch.ones_like(out))
    assert b.grad is None and torch.equal(a.grad, torch.autograd.grad(F.max_pool2d(a, 2).sum(), a)[0])


def test_native_pool_falls_back_to_torch():
    x = torch.randn(2, 3, 8, 8)
    assert not applies(x.double()) and not applies(x.contiguous(memory_format=torch.channels_last))
    assert not applies(x.bfloat16()) and not applies(x[0]) and not applies(x[:, :, :1])  # torch: too small
    assert torch.equal(max_pool2x2_cat([x.double()]), F.max_pool2d(x.double(), 2))
    strided = x.contiguous(memory_format=torch.channels_last)  # one input torch's: all are
    assert torch.equal(max_pool2x2_cat([x, strided]), torch.cat([F.max_pool2d(x, 2)] * 2, 1))


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
    apply = maxpool._PoolJoin.apply
    monkeypatch.setattr(maxpool._PoolJoin, "apply", lambda *xs: calls.append(1) or apply(*xs))
    x = 3 * torch.randn(2, 4, 8, 8)
    out, _, _ = native(x)
    ref, _, _ = block(x)
    assert len(calls) == 1 and out.shape == ref.shape and (out - ref).abs().max() < 1e-4 * ref.abs().max()
