"""Non-finite guard: a bad step changes nothing, is counted, and too many in a row stop training."""
import lightning.pytorch as pl
import pytest
import torch

from spikeloc import kernels
from spikeloc.training import FPTTConfig
from spikeloc.training.guard import NonFiniteError, NonFiniteGuard
from .tiny import QuadrantData, tiny_classifier, trainer


@pytest.fixture(params=[True, False], ids=["cpu_flag_read", "device_where"], autouse=True)
def restore_path(request, monkeypatch):
    """Every test runs both ways of restoring: the CPU's (read the flag, copy back after a bad step)
    and the device path a GPU takes (``torch.where`` per tensor, nothing read back)."""
    monkeypatch.setattr(NonFiniteGuard, "read_cpu_flag", request.param)


def snapshot(params, optimizer, extra=()):
    state = [v.clone() for p in params for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v)]
    return [p.detach().clone() for p in params], state, [t.clone() for t in extra]


def same(a, b):
    return all(len(x) == len(y) and all(torch.equal(s, t) for s, t in zip(x, y)) for x, y in zip(a, b))


def step(guard, params, optimizer, scale, extra=()):
    guard.begin()
    loss = (scale * sum((p ** 2).sum() for p in params))
    optimizer.zero_grad()
    loss.backward()
    guard.expect(loss)
    guard.precheck()  # where bad updates are skipped: drops the gradients of a bad one
    optimizer.step()
    for t in extra:
        t.add_(1.0)
    guard.commit()


@pytest.mark.parametrize("skip", [False, True], ids=["undo", "skip"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_step_leaves_weights_optimizer_and_extra_state_untouched(bad, skip):
    """Undone (a copy of everything put back) or, on the CPU with ``skip_bad_updates``, skipped
    (checked before the step; only the extra tensors are copied)."""
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    extra = [torch.zeros(3, 2)]
    optimizer = torch.optim.Adam(params, lr=0.1)
    guard = NonFiniteGuard(params, optimizer, extra, limit=2, skip_bad_updates=skip)
    step(guard, params, optimizer, 1.0, extra)  # optimizer state now exists
    before = snapshot(params, optimizer, extra)
    step(guard, params, optimizer, bad, extra)
    assert same(snapshot(params, optimizer, extra), before)
    skipping = skip and NonFiniteGuard.read_cpu_flag
    assert len(guard._buffers) == (1 if skipping else 2 + 1 + 2 * 3)  # copied: extra; or weights, extra, Adam's
    assert int(guard.bad_total) == 1 and int(guard.bad_run) == 1
    guard.check()  # 1 < limit
    step(guard, params, optimizer, 1.0, extra)
    assert not same(snapshot(params, optimizer, extra)[:1], before[:1])
    assert int(guard.bad_total) == 1 and int(guard.bad_run) == 0


@pytest.mark.parametrize("skip", [False, True], ids=["undo", "skip"])
def test_bad_first_step_leaves_no_optimizer_state(skip):
    params = [torch.nn.Parameter(torch.randn(5))]
    optimizer = torch.optim.Adam(params, lr=0.1)
    guard = NonFiniteGuard(params, optimizer, limit=1, skip_bad_updates=skip)
    start = params[0].detach().clone()
    step(guard, params, optimizer, float("nan"))
    assert torch.equal(params[0], start) and not optimizer.state
    with pytest.raises(NonFiniteError, match="1 optimizer steps in a row.*model.init_args.max_nonfinite_steps sets"):
        guard.check()


def test_nonfinite_weights_after_step_are_undone():
    params = [torch.nn.Parameter(torch.full((3,), 3e38))]
    optimizer = torch.optim.SGD(params, lr=1e38)  # finite loss and gradient, weights overflow to inf
    guard = NonFiniteGuard(params, optimizer)
    guard.begin()
    loss = -(params[0] - 3e38).sum()
    loss.backward()
    guard.expect(loss)
    optimizer.step()
    guard.commit()
    assert torch.isfinite(loss) and torch.equal(params[0], torch.full((3,), 3e38)) and int(guard.bad_total) == 1


def test_nonfinite_weights_after_a_step_that_cannot_be_undone_stop_at_once():
    """Skipping bad updates keeps no copy of the weights: finite loss and gradients that still give
    non-finite weights (an absurd learning rate) stop training at once, with the buffers put back."""
    params = [torch.nn.Parameter(torch.full((3,), 3e38))]
    extra = [torch.zeros(2)]
    optimizer = torch.optim.SGD(params, lr=1e38)
    guard = NonFiniteGuard(params, optimizer, extra, skip_bad_updates=True)
    guard.begin()
    loss = -(params[0] - 3e38).sum()
    loss.backward()
    guard.expect(loss)
    guard.precheck()
    optimizer.step()
    extra[0].add_(1.0)
    if not NonFiniteGuard.read_cpu_flag:  # the device path undoes it, as without skip_bad_updates
        assert not bool(guard.commit()) and torch.equal(params[0], torch.full((3,), 3e38))
        return
    with pytest.raises(NonFiniteError, match="cannot be undone here.*Lower the learning rate"):
        guard.commit()
    assert torch.equal(extra[0], torch.zeros(2)) and not torch.isfinite(params[0]).all()


@pytest.mark.parametrize("skip", [False, True], ids=["undo", "skip"])
def test_a_non_finite_extra_tensor_drops_the_update(skip):
    """A batch-norm statistic made non-finite by the forward pass, with a finite loss and gradients: the
    update is dropped like any bad one (skipping, the precheck sees it before the step)."""
    params = [torch.nn.Parameter(torch.randn(3))]
    extra = [torch.zeros(2)]
    optimizer = torch.optim.SGD(params, lr=0.1)
    guard = NonFiniteGuard(params, optimizer, extra, skip_bad_updates=skip)
    before = params[0].detach().clone()
    guard.begin()
    extra[0][0] = float("nan")  # as the forward pass moving a running statistic
    loss = (params[0] ** 2).sum()
    loss.backward()
    guard.expect(loss)
    guard.precheck()
    optimizer.step()
    assert not bool(guard.commit())
    assert torch.equal(params[0], before) and torch.equal(extra[0], torch.zeros(2)) and int(guard.bad_total) == 1


def test_the_flag_is_made_on_the_device_asked_for():
    """No CPU flag copied to the device (a host sync on a GPU) when there is nothing to read."""
    from spikeloc.training.guard import _finite
    assert _finite([], torch.device("meta")).device.type == "meta"


def test_weights_covered_by_the_staged_value_are_not_read_again():
    """``staged_covers``: with a staged value (FPTT's, finite only when those weights are) the guard trusts
    it for them; without one, or for weights it does not cover, it reads the weights."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    guard = NonFiniteGuard(params, optimizer, staged_covers=params[:1])
    for poisoned, staged, kept in ((0, torch.tensor(1.0), True), (0, None, False), (1, torch.tensor(1.0), False),
                                   (0, torch.tensor(float("nan")), False)):
        guard.begin()
        loss = sum(p.sum() for p in params)
        optimizer.zero_grad()
        loss.backward()
        guard.expect(loss)
        optimizer.step()
        with torch.no_grad():
            params[poisoned][0] = float("inf")  # as if the step had made it so
        assert bool(guard.commit(staged)) == kept
        assert torch.isfinite(params[poisoned]).all() != kept
        with torch.no_grad():
            params[poisoned].fill_(1.0)


def trained_state(module):
    """Weights, buffers (batch-norm statistics) and the FPTT running average and trace."""
    return [t.detach() for t in [*module.parameters(), *module.buffers(), *module.fptt.running, *module.fptt.trace]]


class Record(pl.Callback):
    """Records the :func:`trained_state` after every batch."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append([t.clone() for t in trained_state(module)])


def poisoned_classifier(bad_batches, fptt_backend="eager", **kwargs):
    """The tiny classifier, fed NaN images at the batches in ``bad_batches``."""
    module = tiny_classifier(fptt=FPTTConfig(parts=2, consolidate=False, backend=fptt_backend), **kwargs)
    plain_step = module.training_step

    def training_step(batch, batch_idx):
        images, labels = batch
        return plain_step((images * float("nan") if batch_idx in bad_batches else images, labels), batch_idx)

    module.training_step = training_step
    return module


@pytest.mark.parametrize("fptt_backend", ["eager", pytest.param("cpu_kernels", marks=pytest.mark.skipif(
    not kernels.available(), reason="the CPU kernels cannot be built here"))])
def test_training_skips_a_bad_batch_and_goes_on(tmp_path, fptt_backend):
    """FPTT eager or as the CPU operator (its staged update dropped either way)."""
    torch.manual_seed(0)
    module = poisoned_classifier({2}, fptt_backend)
    record = Record()
    trainer(tmp_path, limit_train_batches=5, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=QuadrantData())
    before, at, after = record.weights[1], record.weights[2], record.weights[3]
    assert any(b.dtype.is_floating_point for b in tiny_classifier().buffers())  # batch-norm statistics covered
    assert same([at], [before]) and not same([after], [at])
    assert int(module.guard.bad_total) == 2  # both FPTT parts of batch 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
    fptt = module.fptt.state_dict()
    assert all(torch.isfinite(t).all() for t in fptt["running"] + fptt["trace"])
    assert module.fptt.backend == fptt_backend
    assert module.guard._skipping == NonFiniteGuard.read_cpu_flag  # the loop skips bad updates on the CPU


def test_too_many_bad_steps_in_a_row_stop_training(tmp_path):
    torch.manual_seed(0)
    module = poisoned_classifier(set(range(1, 100)), max_nonfinite_steps=4)
    record = Record()
    with pytest.raises(NonFiniteError, match="4 optimizer steps in a row"):
        trainer(tmp_path, limit_train_batches=8, limit_val_batches=0, callbacks=[record]).fit(
            module, datamodule=QuadrantData())
    assert len(record.weights) == 2  # batch 0 trained, batch 1 bad (2 steps), batch 2 bad -> 4 in a row
    assert same([trained_state(module)], [record.weights[0]])


def test_the_clipping_norm_stands_for_the_gradients():
    """``grad_norm`` (the total norm clipping computed) decides for the gradients, which are not read again."""
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    guard = NonFiniteGuard(params, optimizer)
    for grad_norm, kept in ((torch.tensor(2.0), True), (None, False), (torch.tensor(float("inf")), False),
                            (torch.tensor(float("nan")), False)):
        guard.begin()
        before = params[0].detach().clone()
        params[0].grad = torch.tensor([1.0, 1.0, float("nan")])  # stepped as NaN, the weights kept finite below
        with torch.no_grad():
            params[0].sub_(0.1)
        guard.expect(torch.tensor(1.0))
        guard.precheck(grad_norm)
        assert bool(guard.commit()) == kept
        assert torch.equal(params[0], before - 0.1 if kept else before)
