"""The fused LTC-SN / LIF steps against the reference composition (functional.py + surrogate.py).

Tolerances: forward values are compared bit for bit (same ops, same order). Gradients are the
same sums with other roundings (fused multiply-adds, a cheaper surrogate formula): float64 within
1e-12, float32 within 1e-6 (relative and absolute). In bfloat16 the fused step rounds less often
than the reference, so both are held to the float64 gradient of the same inputs: the fused error
at most the reference's own error plus one bfloat16 ulp of the gradient scale. gradcheck runs
in float64.
"""
import pytest
import torch

from spikeloc.neurons import ATan, MultiGaussian, Sigmoid, Surrogate, lif_step, ltc_step
from spikeloc.neurons.fused import fused_lif_step, fused_ltc_step

SURROGATES = [MultiGaussian(), Sigmoid(), ATan()]
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-6, 1e-6)}


def inputs(dtype, shape=(2, 3, 5, 4), seed=0, tensor_threshold=False):
    """Current, membrane and tau spread around the threshold so that some units spike."""
    generator = torch.Generator().manual_seed(seed)
    current = (2 * torch.rand(shape, generator=generator, dtype=torch.float64)).to(dtype)
    u = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    tau = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    threshold = (0.8 + 0.4 * torch.rand(shape[1:], generator=generator, dtype=torch.float64)).to(dtype) \
        if tensor_threshold else 1.0
    leaves = [current, u, tau] + ([threshold] if tensor_threshold else [])
    return [t.requires_grad_() for t in leaves], threshold


def run(step, leaves, threshold, surrogate, reset, seed=1):
    """Forward, then backward of a random mix of both outputs; returns outputs and input gradients."""
    current, u, tau = leaves[:3]
    threshold = leaves[3] if len(leaves) > 3 else threshold
    spike, u_next = step(current, u, tau, threshold, surrogate, reset)
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(spike.shape, generator=generator, dtype=torch.float64).to(spike.dtype) for _ in "ab"]
    grads = torch.autograd.grad((spike * weights[0]).sum() + (u_next * weights[1]).sum(), leaves)
    return (spike, u_next), grads


def clone(leaves):
    return [t.detach().clone().requires_grad_() for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("tensor_threshold", [False, True])
def test_fused_ltc_equals_reference(dtype, reset, surrogate, tensor_threshold):
    leaves, threshold = inputs(dtype, tensor_threshold=tensor_threshold)
    (spike, u_next), grads = run(fused_ltc_step, leaves, threshold, surrogate, reset)
    (ref_spike, ref_u), ref_grads = run(ltc_step, clone(leaves), threshold, surrogate, reset)
    assert 0 < spike.sum() < spike.numel()  # the case exercises both branches of the reset
    assert torch.equal(spike, ref_spike) and torch.equal(u_next, ref_u)
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == ref.dtype and grad.shape == ref.shape
    if dtype == torch.bfloat16:
        exact = [t.detach().double().requires_grad_() for t in leaves]
        _, exact_grads = run(ltc_step, exact, threshold if not tensor_threshold else None, surrogate, reset)
        for grad, ref, truth in zip(grads, ref_grads, exact_grads):
            ulp = 2.0 ** -8 * truth.abs().max().item()
            assert (grad.double() - truth).abs().max() <= (ref.double() - truth).abs().max() + ulp
        return
    rtol, atol = TOLERANCE[dtype]
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("tensor_decay", [False, True])
def test_fused_lif_equals_reference(reset, tensor_decay):
    leaves, _ = inputs(torch.float32)
    current, u, decay = leaves
    decay_arg = decay[0, :, :1, :1].detach().clone().requires_grad_() if tensor_decay else 0.7
    results = []
    for step in (fused_lif_step, lif_step):
        c, v = clone([current, u])
        d = decay_arg.detach().clone().requires_grad_() if tensor_decay else decay_arg
        spike, u_next = step(c, v, d, 1.0, SURROGATES[0], reset)
        wrt = [c, v] + ([d] if tensor_decay else [])
        results.append((spike, u_next, torch.autograd.grad((spike * 0.3 + u_next * u_next).sum(), wrt)))
    (spike, u_next, grads), (ref_spike, ref_u, ref_grads) = results
    assert torch.equal(spike, ref_spike) and torch.equal(u_next, ref_u)
    for grad, ref in zip(grads, ref_grads):
        assert grad.shape == ref.shape  # the broadcast decay's gradient is summed back to its shape
        torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-6)


class Flat(Surrogate):
    """Zero surrogate: the fused backward is then the true derivative of the piecewise-smooth step."""

    def derivative(self, v):
        return torch.zeros_like(v)


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("step", [fused_ltc_step, fused_lif_step])
def test_fused_gradcheck_float64(reset, step):
    # Finite differences see H as flat: with a zero surrogate, and every u' kept >= 1e-3 away from
    # the threshold (so eps = 1e-6 never crosses it), gradcheck checks every other path of the
    # backward (membrane update, tau / decay, reset, tensor threshold). The surrogate path is held
    # to the reference's autograd in float64 above.
    leaves, _ = inputs(torch.float64, shape=(2, 3, 4), tensor_threshold=True)
    current, u, rate, theta = leaves
    with torch.no_grad():
        u1 = u + rate * (current - u) if step is fused_ltc_step else rate * u + current
        theta += torch.where((u1 - theta).abs() < 1e-3, 0.01, 0.0).amax(0)
        assert (u1 - theta).abs().min() > 1e-3 and 0 < (u1 > theta).sum() < u1.numel()
    assert torch.autograd.gradcheck(lambda *args: step(*args, Flat(), reset), tuple(leaves), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("step", [fused_ltc_step, fused_lif_step], ids=["ltc", "lif"])
def test_fused_gradients_keep_the_channels_last_layout(reset, step):
    # a contiguous gradient here would make every convolution's backward after it convert layouts
    leaves, _ = inputs(torch.float32, shape=(2, 8, 5, 4))
    leaves = [t.detach().to(memory_format=torch.channels_last).requires_grad_() for t in leaves]
    leaves.append(torch.full((8, 1, 1), 0.9, requires_grad=True))  # a per-channel threshold
    spike, u_next = step(*leaves, SURROGATES[0], reset)
    weights = [torch.randn(spike.shape).to(memory_format=torch.channels_last) for _ in "ab"]
    grads = torch.autograd.grad((spike * weights[0]).sum() + (u_next * weights[1]).sum(), leaves)
    for tensor in (spike, u_next, *grads[:3]):
        assert tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def test_fused_rejects_unknown_reset():
    with pytest.raises(ValueError, match="reset must be 'hard' or 'soft'"):
        fused_ltc_step(torch.zeros(2), torch.zeros(2), torch.zeros(2), 1.0, "multi_gaussian", "zero")


def test_fused_saves_fewer_tensors_than_reference():
    # autograd keeps what backward needs: count the bytes the graph holds via saved-tensor hooks
    def saved_bytes(step):
        leaves, threshold = inputs(torch.float32, shape=(4, 8, 16, 16))
        seen = {}

        def pack(t):
            seen[t.data_ptr()] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(*leaves, threshold, SURROGATES[0], "hard")
        return sum(seen.values())

    one = 4 * 8 * 16 * 16 * 4
    assert saved_bytes(fused_ltc_step) == 3 * one  # current, u, tau
    assert saved_bytes(ltc_step) > 3 * one


@pytest.mark.slow
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_compiled_fused_ltc_equals_reference(reset):
    leaves, threshold = inputs(torch.float32, shape=(2, 8, 6, 6))
    (spike, u_next), grads = run(lambda *a: fused_ltc_step(*a, compile=True), leaves, threshold, SURROGATES[0], reset)
    (ref_spike, ref_u), ref_grads = run(ltc_step, clone(leaves), threshold, SURROGATES[0], reset)
    assert torch.equal(spike, ref_spike)
    torch.testing.assert_close(u_next, ref_u, rtol=1e-6, atol=1e-6)  # the compiler may contract into FMAs
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_fused_ltc_mixed_dtypes_as_under_autocast(reset):
    # bf16 current and tau (convolutions under bf16-mixed) with a float32 membrane from the state
    leaves, _ = inputs(torch.float32)
    mixed = [leaves[0].detach().bfloat16().requires_grad_(), leaves[1].detach().clone().requires_grad_(),
             leaves[2].detach().bfloat16().requires_grad_()]
    (spike, u_next), grads = run(fused_ltc_step, mixed, 1.0, SURROGATES[0], reset)
    (ref_spike, ref_u), ref_grads = run(ltc_step, clone(mixed), 1.0, SURROGATES[0], reset)
    assert spike.dtype == u_next.dtype == torch.float32
    assert torch.equal(spike, ref_spike) and torch.equal(u_next, ref_u)
    for grad, ref, leaf in zip(grads, ref_grads, mixed):
        assert grad.dtype == leaf.dtype
        torch.testing.assert_close(grad, ref, rtol=1e-2, atol=1e-2)
