"""The ``cpu_kernels`` backend's LTC cell operator against the eager reference (SpikingConv2d: conv, BN, LTCNeuron).

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
from spikeloc.neurons.backend import BackendError
from spikeloc.neurons.layers import SpikingConv2d
from spikeloc.neurons.surrogate import MultiGaussian

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")
RTOL = 1e-4


def cells(reset="hard", threshold=0.6, channels=(3, 6), tau_kernel=3, seed=0):
    """A reference (eager) cell with lively BN parameters, and its ``cpu_kernels`` copy."""
    torch.manual_seed(seed)
    ref = SpikingConv2d(*channels, 3, 1, neuron="ltc", reset=reset, threshold=threshold, tau_kernel=tau_kernel)
    with torch.no_grad():
        for bn in (ref.bn, ref.neuron.tau_bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    nat = copy.deepcopy(ref)
    nat.neuron.backend = "cpu_kernels"
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
def test_kernel_cell_equals_eager_modules(reset, training, use):
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


def test_kernel_cell_without_a_membrane_gradient():
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


def test_kernel_cell_1x1_tau_and_threads():
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


def test_kernel_cell_refuses_what_it_cannot_run():
    """float64, channels-last and bf16 autocast: an error naming the backend and the reason (``auto`` runs the
    fused step there instead)."""
    _, nat = cells()
    x, u, _ = inputs()
    for convert, reason in ((lambda t: t.double(), "float32 only"),
                            (lambda t: t.to(memory_format=torch.channels_last), "channels-last")):
        n = convert(copy.deepcopy(nat))  # nn.Module.double / .to act in place
        with pytest.raises(BackendError, match=f"'cpu_kernels' cannot run here: .*{reason}"):
            n(convert(x), {"u": convert(u)})
        n.neuron.backend = "auto"
        assert n(convert(x), {"u": convert(u)})[0].shape == u.shape
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(BackendError, match="under autocast"):
        nat(x, {"u": u})


def test_kernel_cell_shows_in_the_profiler():
    """The cell is an operator of the dispatcher: the profiler names it, forward and backward."""
    _, nat = cells()
    x, u, weights = inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run(nat, x, u, weights)
    names = {event.name for event in profiler.events()}
    assert {"spikeloc::ltc_cell", "spikeloc::ltc_cell_backward"} <= names


def test_kernel_cell_propagates_nan():
    """A NaN reaching the cell stays visible (the non-finite guard looks for it downstream)."""
    _, nat = cells()
    x, u, _ = inputs()
    x[0, 0, 4, 5] = float("nan")
    _, state = nat(x, {"u": u})
    assert state["u"].isnan().any()


def test_kernel_gradient_stays_finite_for_a_huge_membrane():
    """A membrane so far beyond the threshold that v^2 overflows float32: the surrogate is as good as zero
    there (the modules' exp(-inf) = 0), not NaN; the backward operator called directly."""
    shape, channels = (2, 3, 5, 7), 3  # 35 values per plane: the ragged end of a vector too
    cur, t, grad_spike = torch.zeros(shape), torch.zeros(shape), torch.ones(shape)
    u = torch.zeros(shape)
    u[0, 1, 2] = 1e20  # tau = sigmoid(b2) = 0.5 below: u1 = 5e19, v^2 = inf
    ones, zeros = torch.ones(channels), torch.zeros(channels)
    surrogate = [*MultiGaussian().constants(), MultiGaussian().sigma]
    tau_weight = torch.zeros(channels, channels, 1, 1)
    grads = torch.ops.spikeloc.ltc_cell_backward(grad_spike, None, cur, u, cur, t, tau_weight, ones, zeros, ones,
                                                 zeros, zeros, ones, zeros, ones, True, 0.5, True, 0, True, surrogate)
    assert all(grad.isfinite().all() for grad in grads)
    assert grads[1][0, 1, 2].abs().max() < 1e-30 and grads[1][0, 0].abs().min() > 1e-3


def test_kernel_cell_compiles_without_graph_breaks(fresh_dynamo):
    """Under torch.compile the cell is an opaque operator with its fake tensors: one graph, the same numbers."""
    _, nat = cells()
    x, u, weights = inputs()
    compiled = copy.deepcopy(nat)
    compiled.forward = torch.compile(compiled.forward, fullgraph=True)
    spike, u_next, grads = run(compiled, x, u, weights)
    ref_spike, ref_u, ref_grads = run(nat, x, u, weights)
    assert torch.equal(spike, ref_spike) and close(u_next, ref_u)
    assert all(close(grads[name], ref_grads[name]) for name in grads)


def test_kernels_unavailable_name_the_reason(monkeypatch):
    """Without a compiler: ``cpu_kernels`` raises naming the backend and the reason; ``auto`` runs the fused step."""
    import spikeloc.neurons.backend as backend
    monkeypatch.setattr(kernels, "_LOADED", ["no C++ compiler: 'no-such-c++' is not on PATH (set CXX)"])
    backend._resolve.cache_clear()
    try:
        ref, nat = cells()
        x, u, _ = inputs()
        with pytest.raises(BackendError, match="'cpu_kernels' cannot run here: no C\\+\\+ compiler"):
            nat(x, {"u": u})
        nat.neuron.backend = "auto"
        spike, state = nat(x, {"u": u})
        torch.testing.assert_close(state["u"], ref(x, {"u": u})[1]["u"], rtol=1e-6, atol=1e-6)
    finally:
        backend._resolve.cache_clear()


def test_cpu_kernels_is_an_option_of_ltc_cells_only():
    import timm

    import spikeloc.models  # noqa: F401  (registers the backbones)
    backbone = timm.create_model("spyv4_tiny", width=0.25, backend="cpu_kernels")
    assert sum(getattr(m, "backend", None) == "cpu_kernels" for m in backbone.modules()) > 0
    with pytest.raises(BackendError, match="LIF neurons have none"):
        timm.create_model("spyv4_tiny", width=0.25, backend="cpu_kernels", neuron="lif")
    with pytest.raises(BackendError, match="multi-Gaussian surrogate"):
        SpikingConv2d(3, 4, backend="cpu_kernels", surrogate="atan")


@pytest.mark.parametrize("cells, setting, expected", [("eager", "auto", "eager"), ("cpu_kernels", "auto", "cpu_kernels"),
                                                      ("auto", "auto", "cpu_kernels"),
                                                      ("cpu_kernels", "eager", "eager")])
def test_fptt_update_follows_the_neurons_unless_set(tmp_path, cells, setting, expected):
    """FPTT's ``backend: auto`` runs its operator where the neurons ask for the CPU kernels; with it every update
    after the first hands the next penalty's gradient over."""
    from tests.training.tiny import QuadrantData, tiny_classifier, trainer
    module = tiny_classifier(model_kwargs={"channels": [8, 16], "backend": cells}, fptt={"backend": setting})
    trainer(tmp_path, max_steps=2).fit(module, QuadrantData(num_train=32))
    assert module.fptt.backend == expected


def test_kernel_cell_running_statistics_as_a_cumulative_average():
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
