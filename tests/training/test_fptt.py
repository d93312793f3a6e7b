"""The FPTT engine against a plain per-parameter loop written from the paper's update equations
(README, "Training: FPTT and BPTT")."""
import copy

import pytest
import torch

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
