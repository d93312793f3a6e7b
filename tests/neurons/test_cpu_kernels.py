"""The native LTC cell kernels against the modules they replace (SpikingConv2d: conv, BN, LTCNeuron).

The reference is the module path itself: torch's batch norm, convolution, sigmoid and the
MultiGaussian surrogate's own formula. The kernels sum in another order (BN statistics in double,
one channel at a time), so float32 values and gradients agree within 1e-4 relative to each
tensor's largest entry; spikes are compared exactly (these seeded inputs keep every membrane
further than rounding from the threshold; the test asserts that margin).
"""
import copy

import pytest
import torch

from spikeloc import kernels
from spikeloc.neurons import native
from spikeloc.neurons.modules import SpikingConv2d
from spikeloc.neurons.surrogate import MultiGaussian

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
RTOL = 1e-4


def cells(reset="hard", threshold=0.6, channels=(3, 6), tau_kernel=3, seed=0):
    """A reference cell with lively BN parameters, and its native copy."""
    torch.manual_seed(seed)
    ref = SpikingConv2d(*channels, 3, 1, neuron="ltc", reset=reset, threshold=threshold, tau_kernel=tau_kernel)
    with torch.no_grad():
        for bn in (ref.bn, ref.neuron.tau_bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    nat = copy.deepcopy(ref)
    nat.neuron.native = True
    return ref, nat


def inputs(channels=(3, 6), shape=(9, 11), seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, channels[0], *shape, generator=generator)
    u = torch.rand(2, channels[1], *shape, generator=generator)
    weights = [torch.randn(2, channels[1], *shape, generator=generator) for _ in "ab"]
    return x, u, weights


def run(cell, x, u, weights, use=("spike", "u")):
    """Forward one step, backward a weighted sum of the used outputs; outputs and every gradient."""
    x, u = x.clone().requires_grad_(), u.clone().requires_grad_()
    cell.zero_grad(set_to_none=True)
    spike, state = cell(x, {"u": u})
    loss = sum((out * w).sum() for name, out, w in zip(("spike", "u"), (spike, state["u"]), weights) if name in use)
    loss.backward()
    grads = {"x": x.grad, "u": u.grad, **{name: p.grad for name, p in cell.named_parameters()}}
    return spike, state["u"], grads


def close(actual, expected):
    scale = expected.abs().max().clamp_min(1e-6)
    return (actual - expected).abs().max() <= RTOL * scale


def margin(cell, x, u):
    """Smallest |u1 - threshold| of the reference step (must exceed rounding for exact spikes)."""
    with torch.no_grad():
        current = cell.bn(cell.conv(x))
        u1 = u + cell.neuron.tau(current, u) * (current - u)
    return (u1 - cell.neuron.threshold).abs().min()


@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("use", [("spike", "u"), ("spike",), ("u",)])
def test_native_cell_equals_modules(reset, training, use):
    ref, nat = cells(reset)
    ref.train(training), nat.train(training)
    x, u, weights = inputs()
    assert margin(copy.deepcopy(ref), x, u) > 1e-4
    spike, u_next, grads = run(nat, x, u, weights, use)
    ref_spike, ref_u, ref_grads = run(ref, x, u, weights, use)
    assert 0 < ref_spike.sum() < ref_spike.numel()
    assert torch.equal(spike, ref_spike) and close(u_next, ref_u)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None and grad.shape == ref_grads[name].shape and close(grad, ref_grads[name]), name
    for (name, buffer), ref_buffer in zip(nat.named_buffers(), ref.buffers()):
        assert torch.allclose(buffer.float(), ref_buffer.float(), rtol=1e-5, atol=1e-6), name


def test_native_cell_without_a_membrane_gradient():
    """A membrane cut from the graph (FPTT between updates): no gradient for it, the others as the modules'."""
    ref, nat = cells()
    x, u, weights = inputs()
    grads, ref_grads = [], []
    for cell, out in ((nat, grads), (ref, ref_grads)):
        x_grad = x.clone().requires_grad_()
        cell.zero_grad(set_to_none=True)
        spike, state = cell(x_grad, {"u": u})
        ((spike * weights[0]).sum() + (state["u"] * weights[1]).sum()).backward()
        out += [x_grad.grad] + [p.grad for p in cell.parameters()]
    assert all(close(a, b) for a, b in zip(grads, ref_grads))


def test_native_cell_1x1_tau_and_threads():
    """A 1x1 tau convolution; two threads give the same forward and tau-BN gradients (each channel is one
    thread's; the other gradients pass through torch's convolution backward, close but not bitwise)."""
    ref, nat = cells(tau_kernel=1)
    x, u, weights = inputs()
    spike, u_next, grads = run(nat, x, u, weights)
    ref_spike, ref_u, ref_grads = run(ref, x, u, weights)
    assert torch.equal(spike, ref_spike) and close(u_next, ref_u)
    assert all(close(grads[name], ref_grads[name]) for name in grads)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spike2, u_next2, grads2 = run(nat, x, u, weights)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(spike2, spike) and torch.equal(u_next2, u_next)
    for name in grads:
        same = torch.equal if name.startswith("neuron.tau_bn") else close
        assert same(grads2[name], grads[name]), name


def test_native_cell_runs_the_modules_where_it_does_not_apply():
    """float64, channels-last and bf16 autocast run the usual modules (bit for bit the reference)."""
    ref, nat = cells()
    x, u, weights = inputs()
    for convert in (lambda t: t.double(), lambda t: t.to(memory_format=torch.channels_last)):
        r, n = convert(copy.deepcopy(ref)), convert(copy.deepcopy(nat))  # nn.Module.double / .to act in place
        x1, u1 = convert(x), convert(u)
        assert not native.applies(n, n.conv(x1))
        assert torch.equal(n(x1, {"u": u1})[0], r(x1, {"u": u1})[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.applies(nat, nat.conv(x))


def test_native_cell_propagates_nan():
    """A NaN reaching the cell stays visible (the non-finite guard looks for it downstream)."""
    _, nat = cells()
    x, u, _ = inputs()
    x[0, 0, 4, 5] = float("nan")
    _, state = nat(x, {"u": u})
    assert state["u"].isnan().any()


@pytest.mark.parametrize("portable", [False, True])
def test_native_gradient_stays_finite_for_a_huge_membrane(portable, tmp_path, monkeypatch):
    """A membrane so far beyond the threshold that v^2 overflows float32: the surrogate is as good as zero
    there (the modules' exp(-inf) = 0), not NaN; the backward tau kernel called directly, also as built
    without AVX-512."""
    if portable:
        if not _has_avx512():
            pytest.skip("the default build is the portable one here")
        _use_portable_build(tmp_path, monkeypatch)
    shape, channels = (2, 3, 5, 7), 3  # 35 values per plane: the ragged end of a vector too
    cur, t, grad_spike = torch.zeros(shape), torch.zeros(shape), torch.ones(shape)
    u = torch.zeros(shape)
    u[0, 1, 2] = 1e20  # tau = sigmoid(b2) = 0.5 below: u1 = 5e19, v^2 = inf
    ones, zeros = torch.ones(channels), torch.zeros(channels)
    surrogate = [*MultiGaussian().constants(), MultiGaussian().sigma]
    try:
        grads = native._tau_backward(cur, u, t, grad_spike, None, ones, zeros, zeros, ones, ones, zeros, zeros, ones,
                                     True, 0.5, True, True, surrogate)
    finally:
        kernels.library.cache_clear()  # the next call loads the usual build
    assert all(grad.isfinite().all() for grad in grads)
    assert grads[0][0, 1, 2].abs().max() < 1e-30 and grads[0][0, 0].abs().min() > 1e-3


def test_native_cell_compiles_without_graph_breaks(fresh_dynamo):
    """Under torch.compile the kernels are opaque custom operators: one graph, the same numbers."""
    _, nat = cells()
    x, u, weights = inputs()
    compiled = copy.deepcopy(nat)
    compiled.forward = torch.compile(compiled.forward, fullgraph=True)
    spike, u_next, grads = run(compiled, x, u, weights)
    ref_spike, ref_u, ref_grads = run(nat, x, u, weights)
    assert torch.equal(spike, ref_spike) and close(u_next, ref_u)
    assert all(close(grads[name], ref_grads[name]) for name in grads)


def test_native_kernels_unavailable_warn_and_fall_back(tmp_path, monkeypatch):
    """Without a compiler: one warning naming the failure, and the cells run the usual modules."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path))
    kernels.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="native CPU kernels are unavailable.*no-such-compiler"):
            assert kernels.library() is None
        ref, nat = cells()
        x, u, _ = inputs()
        assert not native.applies(nat, nat.conv(x))
        assert torch.equal(nat(x, {"u": u})[0], ref(x, {"u": u})[0])
    finally:
        kernels.library.cache_clear()  # the next call builds with the real environment


def test_native_kernels_build_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path))
    kernels.library.cache_clear()
    try:
        assert kernels.library() is not None
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"
        stamp = built[0].stat().st_mtime_ns
        kernels.library.cache_clear()
        assert kernels.library() is not None and built[0].stat().st_mtime_ns == stamp
    finally:
        kernels.library.cache_clear()


def test_native_cell_counts_firing_like_the_modules():
    """Firing statistics hook the neuron and its tau convolution: a hooked cell runs the modules."""
    from spikeloc.metrics.firing import FiringStats
    ref, nat = cells()
    x, u, _ = inputs()
    counts = []
    for cell in (ref, nat):
        stats = FiringStats(cell)
        cell(x, {"u": u})
        counts.append((stats.spikes.clone(), stats.ops.clone()))
        stats.remove()
    assert counts[0][0].sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(*counts))


def test_native_is_a_backbone_option_of_ltc_cells_only():
    import timm

    import spikeloc.models  # noqa: F401  (registers the backbones)
    backbone = timm.create_model("spyv4_tiny", width=0.25, native=True)
    assert sum(getattr(m, "native", False) for m in backbone.modules()) > 0
    with pytest.raises(ValueError, match="neuron 'lif' has none"):
        timm.create_model("spyv4_tiny", width=0.25, native=True, neuron="lif")


@pytest.mark.parametrize("cells, setting, expected", [(False, None, False), (True, None, True), (True, False, False)])
def test_fptt_update_is_native_with_native_cells_unless_set(tmp_path, cells, setting, expected):
    """FPTT's ``native`` follows the cells (``fptt.native: null``) unless set, and then also wins over
    ``compile_step``'s compiled update (``fptt.compile: null``); native, every update after the first writes
    the next penalty's gradient."""
    from tests.training.tiny import QuadrantData, tiny_classifier, trainer
    module = tiny_classifier(model_kwargs={"channels": [8, 16], "native": cells}, fptt={"native": setting})
    trainer(tmp_path, max_steps=2).fit(module, QuadrantData(num_train=32))
    assert module.fptt.native == expected
    assert (module.fptt._next_penalty[1] is not None) == expected
    module.compile_step = True
    fptt = module._new_fptt()
    assert (fptt.compile, fptt.native) == (not expected, expected)


def test_native_cell_running_statistics_as_a_cumulative_average():
    """``momentum=None`` (a cumulative average over batches): the same running statistics as the modules."""
    ref, nat = cells()
    for cell in (ref, nat):
        cell.bn.momentum = cell.neuron.tau_bn.momentum = None
    for seed in (1, 2, 3):
        x, u, weights = inputs(seed=seed)
        run(nat, x, u, weights)
        run(ref, x, u, weights)
    for (name, buffer), ref_buffer in zip(nat.named_buffers(), ref.buffers()):
        assert torch.allclose(buffer.float(), ref_buffer.float(), rtol=1e-5, atol=1e-6), name
    assert int(nat.bn.num_batches_tracked) == 3


def _has_avx512() -> bool:
    return " avx512f" in kernels._cpu_key()  # the CPU flags the build is keyed by


def _use_portable_build(tmp_path, monkeypatch) -> None:
    """Load the kernels built without AVX-512 (into ``tmp_path``) until ``kernels.library.cache_clear()``."""
    monkeypatch.setenv("SPIKELOC_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_FLAGS", kernels._FLAGS + ("-mno-avx512f",))
    kernels.library.cache_clear()
    assert kernels.library() is not None


@pytest.mark.skipif(not _has_avx512(), reason="without AVX-512 the portable loops are what every test runs")
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_portable_loops_equal_the_avx512_ones(tmp_path, monkeypatch, reset):
    """The kernels built without AVX-512 (GCC's vectorised loops, padded plane ends) against this CPU's
    AVX-512 build (intrinsics, masked plane ends): the same spikes, values and gradients to float
    rounding, with the membrane's gradient and without it (FPTT's cut)."""
    _, nat = cells(reset)
    x, u, weights = inputs()

    def without_u():
        leaf = x.clone().requires_grad_()
        nat.zero_grad(set_to_none=True)
        spike, state = nat(leaf, {"u": u})
        ((spike * weights[0]).sum() + (state["u"] * weights[1]).sum()).backward()
        return [leaf.grad] + [p.grad for p in nat.parameters()]

    expected = run(nat, x, u, weights), without_u()
    _use_portable_build(tmp_path, monkeypatch)
    try:
        actual = run(nat, x, u, weights), without_u()
    finally:
        kernels.library.cache_clear()  # the next call loads the usual build
    (spike, u_next, grads), (ref_spike, ref_u, ref_grads) = actual[0], expected[0]
    assert torch.equal(spike, ref_spike) and close(u_next, ref_u)
    assert all(close(grads[name], ref_grads[name]) for name in grads)
    assert all(close(a, b) for a, b in zip(actual[1], expected[1]))
    assert not all(torch.equal(grads[name], ref_grads[name]) for name in grads)  # the other build did run
