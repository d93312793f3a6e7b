"""Every neuron backend against the eager reference, and how a backend is chosen: ``auto`` by device, an error
naming the backend and the reason where one cannot run, the old flags refused with their replacement."""
import logging

import pytest
import torch

from spikeloc.neurons import LTCDense, make_neuron
from spikeloc.neurons import backend as backends
from spikeloc.neurons.backend import BackendError, resolve

STEPS = 3


def unroll(neuron: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spikes of ``STEPS`` steps of ``x`` ``[T, B, ...]``, the last state's membrane and the input's gradient of a
    loss that weighs each step differently (BPTT through the membrane)."""
    x = x.detach().requires_grad_()
    state, spikes = None, []
    for t in range(STEPS):
        spike, state = neuron(x[t], state)
        spikes.append(spike)
        assert torch.equal(state["s"], spike)  # the last spikes are kept in the state
    weights = torch.arange(1.0, STEPS + 1, device=x.device).view(STEPS, *[1] * (x.dim() - 1))
    (grad,) = torch.autograd.grad((torch.stack(spikes) * weights).sum() + state["u"].sum(), x)
    return torch.stack(spikes), state["u"], grad


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("kind", ["ltc", "lif", "alif", "dense"])
@pytest.mark.parametrize("backend", ["fused", pytest.param("compiled", marks=pytest.mark.slow)])
def test_backend_equals_eager(kind, backend, device):
    """Each backend's spikes, last membrane and input gradient against the eager reference on the same device."""
    torch.manual_seed(0)
    if kind == "dense":
        make = lambda name: LTCDense(6, 5, recurrent=True, adaptive=True, backend=name)  # noqa: E731
        x = torch.randn(STEPS, 2, 6)
    else:
        make = lambda name: make_neuron(kind, 4, threshold=0.5, backend=name)  # noqa: E731
        x = torch.randn(STEPS, 2, 4, 5, 5)
    reference, other, x = make("eager").to(device), make(backend).to(device), x.to(device)
    other.load_state_dict(reference.state_dict())
    want, got = unroll(reference, x), unroll(other, x)
    assert want[0].sum() > 0
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert f"backend={backend}" in repr(other)


def test_auto_picks_by_device_dtype_and_layout():
    x = torch.zeros(2, 3, 4, 4)
    kernels_here = backends._why_not_kernels("cpu", torch.float32, False, True) is None
    assert resolve("auto", x, True) == ("cpu_kernels" if kernels_here else "fused")
    assert resolve("auto", x, False) == "fused"  # a neuron without kernels
    assert resolve("auto", x.double(), True) == "fused"
    assert resolve("auto", x.to(memory_format=torch.channels_last), True) == "fused"
    assert resolve("auto", x[:, 1:], True) == resolve("auto", x, True)  # a channel slice is still NCHW
    assert resolve("auto", torch.zeros(2, 3, 4, 4, device="meta"), True) == "fused"  # a device without kernels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve("auto", x, True) == "fused"
    for name in ("eager", "fused", "compiled"):
        assert resolve(name, torch.zeros(2, 3, device="meta"), True) == name


@pytest.mark.cuda
def test_auto_runs_fused_on_cuda_and_the_cpu_kernels_refuse_it():
    x = torch.zeros(2, 3, 4, 4, device="cuda")
    assert resolve("auto", x, True) == "fused"
    with pytest.raises(BackendError, match="the kernels are CPU only, the tensors are on cuda"):
        resolve("cpu_kernels", x, True)


def test_a_backend_that_cannot_run_names_itself_and_why():
    with pytest.raises(BackendError, match="'cpu_kernels' cannot run here: the kernels are CPU only, the tensors "
                                           "are on meta"):
        resolve("cpu_kernels", torch.zeros(2, 3, 4, 4, device="meta"), True)
    with pytest.raises(BackendError, match="'cpu_kernels' cannot run here: the kernels are float32 only"):
        resolve("cpu_kernels", torch.zeros(2, 3, 4, 4, dtype=torch.float64), True)
    with pytest.raises(BackendError, match="unknown backend 'native'"):
        make_neuron("ltc", 4, backend="native")
    with pytest.raises(BackendError, match="LIF neurons have none"):
        make_neuron("lif", 4, backend="cpu_kernels")


@pytest.mark.parametrize("old, new", [("fused", "backend: fused"), ("compile", "backend: compiled"),
                                      ("native", "backend: cpu_kernels")])
def test_the_old_flags_name_their_replacement(old, new):
    for kind in ("ltc", "ann", "ltc_readout"):
        with pytest.raises(TypeError, match=f"option '{old}' was replaced by the neuron backend: write {new}"):
            make_neuron(kind, 4, **{old: True})


def test_non_spiking_neurons_ignore_the_backend():
    for kind in ("ann", "ltc_readout"):
        neuron = make_neuron(kind, 4, backend="cpu_kernels")
        assert neuron(torch.randn(2, 4, 3, 3))[0].shape == (2, 4, 3, 3)


def test_auto_is_logged_once(caplog, monkeypatch):
    backends._resolve.cache_clear()
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="spikeloc.neurons.backend"):
        for _ in range(3):
            resolve("auto", x, True)
    backends._resolve.cache_clear()
    assert [r.getMessage() for r in caplog.records] == [
        "neuron backend auto -> fused on cpu, torch.float64 (the kernels are float32 only, the tensors are "
        "torch.float64)"]


def test_a_compiler_failure_raises(monkeypatch):
    import spikeloc.neurons.fused as fused

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no working C++ compiler\nmore lines")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_COMPILED", {})
    neuron = make_neuron("ltc", 4, backend="compiled")
    with pytest.raises(BackendError, match="backend 'compiled': torch.compile of the neuron step failed "
                                           r"\(RuntimeError: no working C\+\+ compiler\)"):
        neuron(torch.randn(2, 4, 3, 3))
