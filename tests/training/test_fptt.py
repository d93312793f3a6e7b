"""The FPTT engine against a plain per-parameter loop written from the paper's update equations
(README, "Training: FPTT and BPTT")."""
import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from spikeloc import kernels
from spikeloc.training.fptt import FPTT

ALPHA, BETA = 0.3, 0.4


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()


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
        penalty = regulariser.penalty()
        penalties.append(penalty.detach())
        loss = model(x).pow(2).mean() + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        regulariser.update()
    return torch.stack(penalties)


@pytest.mark.parametrize("update_alpha", [None, 0.5])
def test_penalty_and_update_match_loop_reference(update_alpha):
    """``update_alpha`` (the reference detection run: 0.1 in the penalty, 0.5 in the updates)."""
    model, ref_model = _model(), _model()
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


@pytest.mark.parametrize("block, compile", [(None, False), (1, False), (7, False), (16, False), (1 << 18, False),
                                           (1 << 18, True)])
def test_penalty_gradient_and_update_match_plain_loop(block, compile, fresh_dynamo):
    """Penalty value, gradient and update, block by block or compiled (inductor: a fused loop per tensor),
    against the docstring's equations written as a per-tensor loop (float64), over several updates with
    the weights moving in between; a staged update that is dropped changes nothing. Compiled: two graphs,
    made once for all updates, and each update computes the next penalty's gradient on the way."""
    params = _mixed_params()
    fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, compile=compile)
    fptt.block = block
    w_bar = [p.detach().clone() for p in params]
    lam = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(4)
    for step in range(4):
        for p in params:
            p.grad = None
        staged_gradient = fptt._next_penalty is not None and fptt._next_penalty[1] is not None
        assert staged_gradient == (compile and step > 0)  # compiled, the update computed the next gradient
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
        if block is not None:  # staged: dropped, it changes nothing
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
    assert bool(fptt._compiled) == compile and (fptt.blocks() is None) == (compile or block is None)
    assert counters["stats"]["unique_graphs"] == (2 if compile else 0)  # not once per update


def test_blocks_give_the_same_numbers_as_one_block():
    """Blocked (flat state) or over the tensor lists, the gradients and the state are bitwise the same."""
    runs = []
    for block in (None, 5):
        params = [torch.nn.Parameter(p.detach().float()) for p in _mixed_params()]
        fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)
        fptt.block = block
        generator = torch.Generator().manual_seed(5)
        grads = []
        for _ in range(3):
            for p in params:
                p.grad = None
            fptt.penalty().backward()
            grads += [p.grad.clone() for p in params]
            with torch.no_grad():
                for p in params:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator))
            fptt.update()
        runs.append(grads + fptt.running + fptt.trace)
    assert len(fptt.blocks().blocks) > 10
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_channels_last_weights_keep_their_layout_and_are_cut_in_place():
    """Channels-last weights (``channels_last: true``): the state takes their layout, and a large one is cut
    into blocks that are views of it (no gather), with the same numbers as the per-tensor formulas."""
    from spikeloc.training.fptt import _dense
    shapes = [(32, 16, 3, 3), (8,), (16, 8, 1, 1)]
    runs = []
    for block in (None, 1000):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s).contiguous(memory_format=torch.channels_last) if len(s) == 4
                                     else torch.randn(s)) for s in shapes]
        fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)
        fptt.block = block
        for step in range(3):
            for p in params:
                p.grad = None
            fptt.penalty().backward()
            runs.append([p.grad.clone() for p in params])
            with torch.no_grad():
                for p in params:
                    p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(step)))
            fptt.update()
        runs[-1] += fptt.running + fptt.trace
        assert [t.stride() for t in fptt.running] == [p.stride() for p in params]
        assert [p.grad.stride() for p in params] == [p.stride() for p in params]
    assert not params[0].is_contiguous() and _dense(params[0]) and not _dense(params[0][:, ::2])
    plans = [plan for plan, *_ in fptt.blocks().blocks]
    assert sum(len(plan) == 1 and plan[0][0] == 0 for plan in plans) == 5  # 4608 elements: 5 blocks, in place
    for per_tensor, blocked in zip(runs[:3], runs[3:]):
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(per_tensor, blocked))


def test_plan_blocks_covers_every_element_once():
    from spikeloc.training.fptt import plan_blocks
    numels, flat = [5, 40, 1, 0, 84, 33, 36, 3], [True, True, True, True, True, True, False, True]
    blocks = plan_blocks(numels, flat, 16)
    covered = [[0] * n for n in numels]
    for block in blocks:
        assert sum(n for _, _, n in block) <= 16 or len(block) == 1  # a tensor that cannot be cut is one block
        assert len(block) == 1 or all(n == numels[i] for i, _, n in block)  # cut pieces are blocks of their own
        for index, start, n in block:
            for k in range(start, start + n):
                covered[index][k] += 1
    assert all(c == [1] * n for c, n in zip(covered, numels))
    pieces = [piece for block in blocks for piece in block]
    assert pieces == sorted(pieces)  # in order: each block is one range of the flat state


def _moved(params, seed):
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(seed)))


def test_staged_update_takes_effect_only_when_accepted():
    """On the CPU an update is staged in spare buffers: dropped, it changes nothing (state, penalty);
    accepted, it equals the plain update, and the penalty value it computed on the way is bitwise the
    one computed from the new state."""
    runs = {}
    for name in ("staged", "plain"):
        params = [torch.nn.Parameter(p.detach().float()) for p in _mixed_params()]
        fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)
        fptt.block = 5
        for step in range(3):
            _moved(params, step)
            if name == "plain":
                fptt.update()
                continue
            before = [t.clone() for t in fptt.running + fptt.trace]
            penalty_before = fptt.penalty().detach()
            value = fptt.stage()
            fptt.accept(torch.tensor(False))
            assert all(torch.equal(a, b) for a, b in zip(fptt.running + fptt.trace, before))
            assert torch.equal(fptt.penalty().detach(), penalty_before)
            assert torch.equal(fptt.stage(), value)  # the same update again, now kept
            fptt.accept(torch.tensor(True))
            assert fptt._next_penalty is not None and torch.equal(fptt.penalty().detach(), value)
            fptt._next_penalty = None
            assert torch.equal(fptt.penalty().detach(), value)  # from the state itself
        runs[name] = fptt.running + fptt.trace + [fptt.penalty().detach()]
    assert fptt.in_place_state() == []  # the guard copies none of it
    assert all(torch.equal(a, b) for a, b in zip(runs["staged"], runs["plain"]))


def test_penalty_is_computed_again_when_weights_or_state_change_in_place():
    params = [torch.nn.Parameter(p.detach()) for p in _mixed_params()]
    fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5)
    _moved(params, 0)
    fptt.update()

    def fresh():
        cached, fptt._next_penalty = fptt._next_penalty, None
        value = fptt.penalty().detach()
        fptt._next_penalty = cached
        return value

    _moved(params, 1)  # the weights move (an optimizer step, the guard restoring them)
    assert torch.equal(fptt.penalty().detach(), fresh())
    fptt.update()
    fptt.consolidate()  # W <- W_bar
    assert torch.equal(fptt.penalty().detach(), fresh())
    fptt.update()
    before = fptt.penalty().detach()
    fptt.load_state_dict({**fptt.state_dict(), "trace": [torch.ones_like(t) for t in fptt.trace]})
    assert torch.equal(fptt.penalty().detach(), fresh()) and not torch.equal(fptt.penalty().detach(), before)


def test_failing_compile_warns_once_and_runs_blocked(monkeypatch):
    """If ``torch.compile`` fails, one warning, and the state goes back to the flat blocked path: the same
    numbers bit for bit as FPTT that never compiled."""
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    runs = []
    for compile in (True, False):
        params = [torch.nn.Parameter(p.detach().float()) for p in _mixed_params()]
        fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, compile=compile)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(_updates(fptt, params))
        assert [str(w.message) for w in caught if "no compiler here" in str(w.message)] == \
            ["FPTT compile: torch.compile failed (RuntimeError: no compiler here); running FPTT eager"] * compile
        assert fptt.blocks() is not None and not fptt.compile
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def _updates(fptt, params, steps=3):
    """Penalty, backward, a weight move and an update, ``steps`` times: the gradients and the state after."""
    for step in range(steps):
        for p in params:
            p.grad = None
        fptt.penalty().backward()
        _moved(params, step)
        fptt.update()
    return [p.grad for p in params] + fptt.running + fptt.trace


@pytest.mark.parametrize("compile, native", [(False, False), ({"backend": "aot_eager"}, False), (False, True)])
def test_staged_value_is_not_finite_when_the_new_state_is_not(compile, native):
    params = [torch.nn.Parameter(torch.ones(6)), torch.nn.Parameter(torch.ones(3))]
    fptt = FPTT(params, ALPHA, BETA, compile=compile, native=native)
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
    assert bool(fptt._compiled) == bool(compile)
    assert (fptt._staged_gradients is not None) == (bool(compile) or native and kernels.available())


def _dense_float_params(seed=6):
    """float32 parameters the native kernel takes: dense in every layout (contiguous, empty, transposed,
    channels-last), one large enough to be split over threads."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=generator) for s in [(5, 3), (0,), (1,), (70_001,), (6, 7, 2)]]
    params.append(torch.randn(4, 9, generator=generator).t())
    params.append(torch.randn(4, 3, 3, 2, generator=generator).contiguous(memory_format=torch.channels_last))
    return [torch.nn.Parameter(p) for p in params]


@pytest.mark.skipif(not kernels.available(), reason="no C compiler for the native kernels")
def test_native_update_matches_the_equations_on_one_and_two_threads():
    """``native``: one kernel call stages the update and writes the next penalty's value and gradient; against
    the docstring's equations in float64 over several updates (a dropped stage changes nothing), and
    bitwise the same state and gradients on 1 and 2 threads."""
    runs, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            params = _dense_float_params()
            fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, native=True)
            w_bar = [p.detach().double() for p in params]
            lam = [torch.zeros_like(b) for b in w_bar]
            grads = []
            for step in range(4):
                for p in params:
                    p.grad = None
                assert (fptt._next_penalty is not None and fptt._next_penalty[1] is not None) == (step > 0)
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


def test_native_falls_back_where_the_kernel_does_not_apply():
    """A weight with gaps (or float64) runs the blocked path: the same numbers as FPTT without ``native``."""
    for params_of in (lambda: _dense_float_params() + [torch.nn.Parameter(torch.ones(4, 18)[:, ::2])],
                      lambda: [torch.nn.Parameter(p.detach().double()) for p in _dense_float_params()]):
        runs = []
        for native in (True, False):
            params = params_of()
            fptt = FPTT(params, ALPHA, BETA, update_alpha=0.5, native=native)
            runs.append(_updates(fptt, params))
            assert fptt._next_penalty[1] is None  # the kernel did not run
        assert all(torch.equal(a, b) for a, b in zip(*runs))

