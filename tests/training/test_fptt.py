"""The FPTT engine against a plain per-parameter loop written from the paper's update equations
(README, "Training: FPTT and BPTT")."""
import copy

import pytest
import torch

from spikeloc import kernels
from spikeloc.neurons.backend import BackendError
from spikeloc.training.fptt import FPTT

ALPHA, BETA = 0.3, 0.4


def _model(device="cpu"):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double().to(device)


class LoopReference:
    def __init__(self, params, update_alpha=ALPHA):
        self.params = list(params)
        self.update_alpha = update_alpha
        self.w_bar = [p.detach().clone() for p in self.params]
        self.lam = [torch.zeros_like(p) for p in self.params]

    def penalty(self):
        total = 0.0
        for w, w_bar, lam in zip(self.params, self.w_bar, self.lam):
            total = total - (w * lam).sum() + ALPHA / 2 * ((w - w_bar) ** 2).sum()
        return total

    def update(self):
        for i, w in enumerate(self.params):
            self.lam[i] = self.lam[i] - self.update_alpha * (w.detach() - self.w_bar[i])
            self.w_bar[i] = (1 - BETA) * self.w_bar[i] + BETA * w.detach() - BETA / self.update_alpha * self.lam[i]


def _train(model, regulariser, steps=6):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalties = []
    for step in range(steps):
        x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        x = x.to(next(model.parameters()).device)
        penalty = regulariser.penalty()
        penalties.append(penalty.detach())
        loss = model(x).pow(2).mean() + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        regulariser.update()
    return torch.stack(penalties)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("update_alpha", [None, 0.5])
def test_penalty_and_update_match_loop_reference(update_alpha, device):
    """``update_alpha`` (the reference detection run: 0.1 in the penalty, 0.5 in the updates)."""
    model, ref_model = _model(device), _model(device)
    fptt = FPTT(model.parameters(), ALPHA, BETA, update_alpha)
    reference = LoopReference(ref_model.parameters(), ALPHA if update_alpha is None else update_alpha)
    penalties, ref_penalties = _train(model, fptt), _train(ref_model, reference)
    assert torch.allclose(penalties, ref_penalties, atol=1e-6)
    assert ref_penalties.abs().max() > 1e-4  # the regulariser was active
    for mine, ref in zip(fptt.running + fptt.trace, reference.w_bar + reference.lam):
        assert torch.allclose(mine, ref, atol=1e-6)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_penalty_gradient_is_closed_form():
    model = _model()
    fptt = FPTT(model.parameters(), ALPHA, BETA)
    _train(model, fptt, steps=3)
    for p in model.parameters():
        p.grad = None
    fptt.penalty().backward()
    for p, w_bar, lam in zip(model.parameters(), fptt.running, fptt.trace):
        assert torch.allclose(p.grad, ALPHA * (p.detach() - w_bar) - lam, atol=1e-12)


def test_consolidate_copies_running_average():
    model = _model()
    fptt = FPTT(model.parameters(), ALPHA, BETA)
    _train(model, fptt, steps=3)
    assert not all(torch.equal(p, w) for p, w in zip(model.parameters(), fptt.running))
    fptt.consolidate()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), fptt.running))


def test_state_dict_round_trip_and_shape_check():
    model = _model()
    fptt = FPTT(model.parameters(), ALPHA, BETA)
    _train(model, fptt, steps=2)
    clone_model = copy.deepcopy(model)
    restored = FPTT(clone_model.parameters(), 0.1, 0.5)
    restored.load_state_dict(fptt.state_dict())
    assert (restored.alpha, restored.beta) == (ALPHA, BETA)
    assert all(torch.equal(a, b) for a, b in zip(restored.running + restored.trace, fptt.running + fptt.trace))
    other = FPTT(torch.nn.Linear(3, 3).double().parameters())
    with pytest.raises(ValueError, match="another architecture"):
        other.load_state_dict(fptt.state_dict())


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="alpha"):
        FPTT(_model().parameters(), alpha=0.0)


def _mixed_params():
    """float64 parameters of several sizes and layouts: contiguous, transposed, channels-last (the last two
    dense: cut in memory order) and one with gaps (gathered whole)."""
    generator = torch.Generator().manual_seed(3)
    shapes = [(5, 3), (40,), (1,), (0,), (6, 7, 2), (3, 11)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64, generator=generator)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(4, 9, dtype=torch.float64, generator=generator).t()))
    conv = torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=generator)
    params.append(torch.nn.Parameter(conv.contiguous(memory_format=torch.channels_last)))
    params.append(torch.nn.Parameter(torch.randn(4, 18, dtype=torch.float64, generator=generator)[:, ::2]))
    return params


@pytest.mark.parametrize("staging", [True, False])
def test_penalty_gradient_and_update_match_plain_loop(staging, monkeypatch):
    """Penalty value, gradient and update against the docstring's equations written as a per-tensor loop
    (float64), over several updates with the weights moving in between; staged (the CPU) or in place (other
    devices); a staged update that is dropped changes nothing."""
    params = _mixed_params()
    fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)
    monkeypatch.setattr(fptt, "_staging", lambda: staging)
    w_bar = [p.detach().clone() for p in params]
    lam = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(4)
    for step in range(4):
        for p in params:
            p.grad = None
        assert (fptt._ahead is not None) == (staging and step > 0)  # staged, the update computed the next penalty
        value = fptt.penalty()
        scale = 3.0 if step % 2 else 1.0  # an upstream gradient other than 1, too
        (scale * value).backward()
        expected = sum(-(w.detach() * l).sum() + ALPHA / 2 * ((w.detach() - b) ** 2).sum()
                       for w, b, l in zip(params, w_bar, lam))
        assert torch.allclose(value, torch.as_tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        for w, b, l in zip(params, w_bar, lam):
            assert torch.allclose(w.grad, scale * (ALPHA * (w.detach() - b) - l), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            for p in params:
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=generator))
        if staging:  # dropped, it changes nothing
            before = [t.clone() for t in fptt.running + fptt.trace]
            assert fptt.stage() is not None
            fptt.accept(torch.tensor(False))
            assert all(torch.equal(a, b) for a, b in zip(fptt.running + fptt.trace, before))
        fptt.update()
        for i, w in enumerate(params):
            lam[i] = lam[i] - 0.5 * (w.detach() - w_bar[i])
            w_bar[i] = (1 - BETA) * w_bar[i] + BETA * w.detach() - BETA / 0.5 * lam[i]
        for mine, ref in zip(fptt.running + fptt.trace, w_bar + lam):
            assert mine.shape == ref.shape and torch.allclose(mine, ref, rtol=1e-12, atol=1e-12)
    assert max(l.abs().max() for l in lam if l.numel()) > 1e-3  # the trace moved
    assert (fptt.in_place_state() == []) == staging  # staged, the guard copies none of the state


def test_state_is_one_flat_buffer_laid_out_like_the_weights():
    """``W_bar`` and ``lam`` are views of one buffer each, in every weight's own layout (channels-last stays
    channels-last, a weight with gaps gets a contiguous view), and so is the penalty's gradient."""
    from spikeloc.training.fptt import _dense
    params = _mixed_params()
    fptt = FPTT(params, ALPHA, BETA)
    for views in (fptt.running, fptt.trace):
        assert len({v.untyped_storage().data_ptr() for v in views}) == 1
    assert [t.stride() for t in fptt.running] == [p.stride() if _dense(p) else p.contiguous().stride()
                                                  for p in params]
    assert not params[-1].is_contiguous() and not _dense(params[-1]) and _dense(params[-2])
    _updates(fptt, params, steps=2)
    assert [p.grad.stride() for p in params] == [t.stride() for t in fptt.running]


def _moved(params, seed):
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpu_kernels", marks=pytest.mark.skipif(
    not kernels.available(), reason="the CPU kernels cannot be built here"))])
def test_staged_update_takes_effect_only_when_accepted(backend):
    """On the CPU an update is staged in spare buffers: dropped, it changes nothing (state, penalty);
    accepted, it equals the plain update, and the penalty it computed on the way is bitwise the one computed
    from the new state (so a run resumed from a checkpoint, which hands nothing over, trains bitwise the same)."""
    runs = {}
    for name in ("staged", "plain"):
        params = [torch.nn.Parameter(p.detach().float()) for p in
                  (_mixed_params() if backend == "eager" else _dense_float_params())]
        fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, backend=backend)
        for step in range(3):
            _moved(params, step)
            if name == "plain":
                fptt.update()
                continue
            before = [t.clone() for t in fptt.running + fptt.trace]
            value = fptt.stage()
            fptt.accept(torch.tensor(False))
            assert all(torch.equal(a, b) for a, b in zip(fptt.running + fptt.trace, before))
            assert fptt._ahead is None  # nothing handed over
            assert torch.equal(fptt.stage(), value)  # the same update again, now kept
            fptt.accept(torch.tensor(True))
            handed, gradient = fptt.next_penalty()
            computed, computed_gradient = fptt.next_penalty()  # the hand-over is used once: from the state itself
            assert torch.equal(handed, value) and torch.equal(computed, value)
            assert all(torch.equal(a, b) for a, b in zip(gradient, computed_gradient, strict=True))
        runs[name] = fptt.running + fptt.trace + [fptt.penalty().detach()]
    assert all(torch.equal(a, b) for a, b in zip(runs["staged"], runs["plain"]))


def test_penalty_is_computed_again_when_fptt_changes_the_weights_or_state():
    """The next penalty an accepted update hands over is dropped when the weights or the state change through
    FPTT (consolidate, load_state_dict) or another update begins."""
    params = [torch.nn.Parameter(p.detach()) for p in _mixed_params()]
    fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)

    def fresh():
        return sum(-(w.detach() * lam).sum() + ALPHA / 2 * ((w.detach() - b) ** 2).sum()
                   for w, b, lam in zip(params, fptt.running, fptt.trace))

    _moved(params, 0)
    fptt.update()
    fptt.consolidate()  # W <- W_bar
    assert torch.allclose(fptt.penalty().detach(), fresh(), rtol=1e-12, atol=1e-12)
    fptt.update()
    before = fresh()
    fptt.load_state_dict({**fptt.state_dict(), "trace": [torch.ones_like(t) for t in fptt.trace]})
    assert torch.allclose(fptt.penalty().detach(), fresh(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fresh(), before)


def _updates(fptt, params, steps=3):
    """Penalty, backward, a weight move and an update, ``steps`` times: the gradients and the state after."""
    for step in range(steps):
        for p in params:
            p.grad = None
        fptt.penalty().backward()
        _moved(params, step)
        fptt.update()
    return [p.grad for p in params] + fptt.running + fptt.trace


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpu_kernels", marks=pytest.mark.skipif(
    not kernels.available(), reason="the CPU kernels cannot be built here"))])
def test_staged_value_is_not_finite_when_the_new_state_is_not(backend):
    params = [torch.nn.Parameter(torch.ones(6)), torch.nn.Parameter(torch.ones(3))]
    fptt = FPTT(params, ALPHA, BETA, backend=backend)
    assert torch.isfinite(fptt.stage())
    fptt.accept(True)
    with torch.no_grad():
        params[1][2] = 3e38  # finite, but W - W_bar and lam overflow
    assert not torch.isfinite(fptt.stage())
    for bad in (float("inf"), float("-inf"), float("nan")):  # nor when a weight is not (the guard relies on it)
        with torch.no_grad():
            params[1][2] = 1.0
            params[0][4] = bad
        assert not torch.isfinite(fptt.stage())


def _dense_float_params(seed=6):
    """float32 parameters the CPU operator takes: dense in every layout (contiguous, empty, transposed,
    channels-last), one large enough to be split over threads."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=generator) for s in [(5, 3), (0,), (1,), (70_001,), (6, 7, 2)]]
    params.append(torch.randn(4, 9, generator=generator).t())
    params.append(torch.randn(4, 3, 3, 2, generator=generator).contiguous(memory_format=torch.channels_last))
    return [torch.nn.Parameter(p) for p in params]


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")
def test_kernel_update_matches_the_equations_on_one_and_two_threads():
    """``cpu_kernels``: one operator stages the update and writes the next penalty's value and gradient; against
    the docstring's equations in float64 over several updates (a dropped stage changes nothing), and
    bitwise the same state and gradients on 1 and 2 threads."""
    runs, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            params = _dense_float_params()
            fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, backend="cpu_kernels")
            w_bar = [p.detach().double() for p in params]
            lam = [torch.zeros_like(b) for b in w_bar]
            grads = []
            for step in range(4):
                for p in params:
                    p.grad = None
                assert (fptt._ahead is not None) == (step > 0)
                value = fptt.penalty()
                scale = 3.0 if step % 2 else 1.0
                (scale * value).backward()
                expected = sum(-(w.detach().double() * l).sum() + ALPHA / 2 * ((w.detach().double() - b) ** 2).sum()
                               for w, b, l in zip(params, w_bar, lam))
                assert value.dtype == torch.float32 and torch.allclose(value.double(), expected, rtol=1e-5)
                for w, b, l in zip(params, w_bar, lam):
                    assert w.grad.stride() == w.stride()
                    assert torch.allclose(w.grad.double(), scale * (ALPHA * (w.detach().double() - b) - l), atol=1e-5)
                grads += [p.grad.clone() for p in params]
                _moved(params, step)
                before = [t.clone() for t in fptt.running + fptt.trace]
                fptt.stage()
                fptt.accept(torch.tensor(False))
                assert all(torch.equal(a, b) for a, b in zip(fptt.running + fptt.trace, before))
                fptt.update()
                for i, w in enumerate(params):
                    lam[i] = lam[i] - 0.5 * (w.detach().double() - w_bar[i])
                    w_bar[i] = (1 - BETA) * w_bar[i] + BETA * w.detach().double() - BETA / 0.5 * lam[i]
                for mine, ref, p in zip(fptt.running + fptt.trace, w_bar + lam, params + params):
                    assert mine.stride() == p.stride() and torch.allclose(mine.double(), ref, atol=1e-5)
            assert max(l.abs().max() for l in lam if l.numel()) > 1e-2  # the trace moved
            runs.append(grads + fptt.running + fptt.trace)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")
def test_kernel_update_refuses_what_it_cannot_run():
    """A weight with gaps or float64 weights: an error naming the backend and the reason."""
    with pytest.raises(BackendError, match="'cpu_kernels' needs every parameter dense"):
        FPTT(_dense_float_params() + [torch.nn.Parameter(torch.ones(4, 18)[:, ::2])], backend="cpu_kernels")
    with pytest.raises(BackendError, match="'cpu_kernels' runs float32 CPU parameters, these are torch.float64"):
        FPTT([torch.nn.Parameter(p.detach().double()) for p in _dense_float_params()], backend="cpu_kernels")


@pytest.mark.skipif(not kernels.available(), reason="the CPU kernels cannot be built here")
def test_kernel_update_equals_the_eager_one_to_rounding():
    runs = []
    for backend in ("eager", "cpu_kernels"):
        params = _dense_float_params()
        runs.append(_updates(FPTT(params, ALPHA, BETA, update_alpha=0.5, backend=backend), params, steps=4))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kernel_update_shows_in_the_profiler():
    if not kernels.available():
        pytest.skip("the CPU kernels cannot be built here")
    params = _dense_float_params()
    fptt = FPTT(params, ALPHA, BETA, backend="cpu_kernels")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fptt.update()
    assert "spikeloc::fptt_stage" in {event.name for event in profiler.events()}
