"""``compile_step``: the whole model time step through ``torch.compile`` (README "Speed").

Reference: the same detector run eager. A tiny SPYv4 (width 0.125, 64x64, T = 2, FPTT with K = T)
runs one batch span by span (state detached between spans, as the loop does); the losses, the
outputs of every step and the gradients of every span must match eager, the state dict keeps its
keys, and the number of compiled graphs stays bounded (state None at the first step, a dict after;
training and no-grad evaluation), not one per batch.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from spikeloc import kernels
from spikeloc.neurons import detach_state
from spikeloc.training import FPTTConfig, SpikingDetector
from spikeloc.training.time_loop import span_loss, step_weights


def _detector(compile_step, backend="eager"):
    torch.manual_seed(0)
    return SpikingDetector(backbone="spyv4_tiny", backbone_kwargs={"width": 0.125, "backend": backend}, num_classes=3,
                           class_names=["a", "b", "c"], image_size=64, num_steps=2, algorithm="fptt",
                           fptt=FPTTConfig(parts=None, consolidate=False), compile_step=compile_step)


def _batch(seed=0, size=64, batch_size=2):
    generator = torch.Generator().manual_seed(seed)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]),
                "labels": torch.tensor([0, 2]), "image_id": k} for k in range(batch_size)]
    return {"images": torch.rand(batch_size, 3, size, size, generator=generator), "targets": targets}


def _fptt_batch(module, batch):
    """Per span (one step each): loss, raw outputs and gradients, the state carried detached."""
    module.train()
    input_at, num_steps = module.inputs(batch)
    weights = step_weights(num_steps)
    state, results = None, []
    for t in range(num_steps):
        state = detach_state(state)
        output, _ = module.forward_step(input_at(t), detach_state(state))  # the step's outputs
        loss, state, _ = span_loss(module, batch, input_at, range(t, t + 1), weights, state)
        module.zero_grad(set_to_none=True)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        results.append((loss.detach(), [o.detach() for o in output], grads))
    return results


def _assert_close(eager, compiled, rtol):
    """Every loss, output and gradient within ``rtol`` of the largest magnitude of its tensor."""
    for (loss_e, out_e, grad_e), (loss_c, out_c, grad_c) in zip(eager, compiled, strict=True):
        pairs = [(loss_e, loss_c), *zip(out_e, out_c, strict=True)]
        assert grad_e.keys() == grad_c.keys() and grad_e
        pairs += [(grad_e[name], grad_c[name]) for name in grad_e]
        for a, b in pairs:
            assert a.shape == b.shape
            scale = a.abs().max().clamp_min(1e-12)
            assert ((a - b).abs().max() / scale).item() <= rtol


def _compare(compile_step, rtol):
    eager, compiled = _detector(False), _detector(compile_step)
    keys = list(compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())
    batch = _batch()
    reference = _fptt_batch(eager, batch)
    _assert_close(reference, _fptt_batch(compiled, batch), rtol)
    assert compiled.compile_step and compiled._compiled_call is not None  # no silent fallback
    assert list(compiled.state_dict()) == keys == list(eager.state_dict())  # checkpoints unchanged
    return eager, compiled, batch


def test_compile_step_matches_eager_and_compiles_few_graphs(fresh_dynamo):
    """aot_eager backend (fast: dynamo + AOT autograd, eager kernels): same numbers as eager (float32,
    1e-6 of each tensor's largest magnitude), two training graphs (state None, state dict) reused by
    a second batch, two more for no-grad evaluation."""
    eager, compiled, batch = _compare({"backend": "aot_eager"}, 1e-6)
    assert counters["stats"]["unique_graphs"] == 2
    _assert_close(_fptt_batch(eager, _batch(1)), _fptt_batch(compiled, _batch(1)), 1e-6)
    assert counters["stats"]["unique_graphs"] == 2  # not one per batch
    eager.eval(), compiled.eval()
    for a, b in zip(eager.run_sequence(batch), compiled.run_sequence(batch), strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 4
    compiled.run_sequence(batch)
    assert counters["stats"]["unique_graphs"] == 4


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")
def test_compile_step_calls_the_cpu_kernels_as_they_are(fresh_dynamo):
    """The cpu_kernels cells (their operators and the strided convolution's channels-last gradient) inside
    the compiled step: the eager step's numbers to float rounding, two graphs, no fallback."""
    eager, compiled = _detector(False, "cpu_kernels"), _detector({"backend": "aot_eager"}, "cpu_kernels")
    compiled.load_state_dict(eager.state_dict())
    batch = _batch()
    _assert_close(_fptt_batch(eager, batch), _fptt_batch(compiled, batch), 1e-6)
    assert compiled._compiled_call is not None and counters["stats"]["unique_graphs"] == 2


@pytest.mark.slow
def test_compile_step_inductor_matches_eager(fresh_dynamo):
    """The default backend (inductor: minutes to compile on a CPU): fused kernels reorder float32
    sums, so 1e-4 of each tensor's largest magnitude."""
    _compare(True, 1e-4)


def test_failing_compile_warns_once_and_runs_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    eager, compiled = _detector(False), _detector(True)
    compiled.load_state_dict(eager.state_dict())
    batch = _batch()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        result = _fptt_batch(compiled, batch)
    assert compiled.compile_step is False
    _assert_close(_fptt_batch(eager, batch), result, 0.0)  # eager: the same numbers bit for bit
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fptt_batch(compiled, batch)  # once only


@pytest.mark.parametrize("compile_step, expected", [
    (True, {"options": {"layout_optimization": False}}),
    ({"dynamic": True, "options": {"max_autotune": True}},
     {"dynamic": True, "options": {"layout_optimization": False, "max_autotune": True}}),
    ({"options": {"layout_optimization": True}}, {"options": {"layout_optimization": True}}),
    ({"mode": "max-autotune"}, {"mode": "max-autotune"}),  # torch.compile takes no options with a mode
    ({"backend": "aot_eager"}, {"backend": "aot_eager"}),
])
def test_the_compiled_step_keeps_the_memory_format_unless_told(monkeypatch, compile_step, expected):
    """Inductor's layout_optimization (convolutions turned channels-last) is off unless set: on an AVX2
    CPU it made the full-size step 1.26-1.41x slower (README "Speed"); ``channels_last`` picks the layout."""
    calls = []

    def recording(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording)
    module = _detector(compile_step)
    module.call_step(module.model, _batch()["images"])
    assert calls == [expected]


def test_evaluation_counts_firing_through_the_compiled_step(fresh_dynamo):
    """An evaluation epoch that counts firing statistics runs the compiled step, as training does: the
    statistics read the states it returns, the same as the eager step's."""
    eager, compiled = _detector(False), _detector({"backend": "aot_eager"})
    compiled.load_state_dict(eager.state_dict())
    results = []
    for module in (eager, compiled):
        for neuron in module.modules():
            if hasattr(neuron, "threshold"):
                neuron.threshold = 0.05  # fresh weights: let the cells fire
        module.eval()
        module.start_evaluation()
        module.run_sequence(_batch())
        results.append(module.firing_stats.compute(time_steps=None))
        module.firing_meters.remove(module.firing_stats)
    assert compiled.compile_step and compiled._compiled_call is not None
    assert counters["stats"]["unique_graphs"] == 2  # no-grad evaluation: state None, then a dict
    assert results[1]["sample_steps"] == 2 * 2 and results[1]["mean_firing_rate"] > 0
    for key in ("mean_firing_rate", "synops", "macs", "ann_macs"):
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-6), key


@pytest.mark.slow
def test_new_batch_size_compiles_once_more(fresh_dynamo):
    """A batch of a new size (e.g. an epoch's last) compiles the two training graphs once more, with a
    dynamic batch size (torch's automatic dynamic shapes); further sizes reuse them."""
    eager, compiled = _detector(False), _detector({"backend": "aot_eager"})
    compiled.load_state_dict(eager.state_dict())
    for batch_size, graphs in ((2, 2), (3, 4), (4, 4), (5, 4)):
        batch = _batch(batch_size=batch_size)
        _assert_close(_fptt_batch(eager, batch), _fptt_batch(compiled, batch), 1e-6)
        assert counters["stats"]["unique_graphs"] == graphs
