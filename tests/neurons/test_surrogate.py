"""Surrogate gradients against the closed-form derivatives of their smooth primitives."""
import math

import pytest
import torch

from spikeloc.neurons import ATan, MultiGaussian, Sigmoid, get_surrogate


def _phi(v, mu, sigma):
    return 0.5 * (1 + torch.erf((v - mu) / (sigma * math.sqrt(2))))


PRIMITIVES = {
    # F with F' = surrogate, written independently of the implementation.
    "multi_gaussian": lambda v: 0.5 * (1.15 * _phi(v, 0, 0.3) - 0.15 * _phi(v, 0.3, 1.8) - 0.15 * _phi(v, -0.3, 1.8)),
    "sigmoid": lambda v: torch.sigmoid(4.0 * v),
    "atan": lambda v: torch.atan(math.pi / 2 * 2.0 * v) / math.pi + 0.5,
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_backward_equals_primitive_derivative(name):
    v = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    surrogate = get_surrogate(name)
    (grad,) = torch.autograd.grad(surrogate(v).sum(), v)
    v_ref = v.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(PRIMITIVES[name](v_ref).sum(), v_ref)
    assert torch.allclose(grad, expected, atol=1e-10)


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_forward_is_heaviside(name):
    v = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 2.0])
    assert get_surrogate(name)(v).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("surrogate", [MultiGaussian(), Sigmoid(), ATan()])
def test_derivative_passes_gradcheck(surrogate):
    # the derivative itself is smooth: its own gradient is checked numerically
    v = torch.linspace(-2, 2, 21, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(surrogate.derivative, (v,))


def test_multi_gaussian_peak_value():
    # at v = 0: gamma [(1+h) N(0;0,s) - 2 h N(0; s, 6s)]
    s, h = 0.3, 0.15
    n0 = 1 / (s * math.sqrt(2 * math.pi))
    wide = 1 / (6 * s * math.sqrt(2 * math.pi)) * math.exp(-(s**2) / (2 * (6 * s) ** 2))
    assert MultiGaussian().derivative(torch.tensor(0.0)).item() == pytest.approx(0.5 * ((1 + h) * n0 - 2 * h * wide))


def test_multi_gaussian_float32_is_as_accurate_as_the_papers_form():
    # the paper's code: exp(-(v - mu)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)) per term, divisions and all
    def paper(v):
        def gauss(mu, sigma):
            return torch.exp(-((v - mu) ** 2) / (2 * sigma**2)) / torch.sqrt(2 * torch.tensor(math.pi)) / sigma
        return 0.5 * (1.15 * gauss(0.0, 0.3) - 0.15 * gauss(0.3, 1.8) - 0.15 * gauss(-0.3, 1.8))

    v = torch.linspace(-4, 4, 100_001)
    exact = paper(v.double())
    ours, theirs = (MultiGaussian().derivative(v).double() - exact).abs(), (paper(v).double() - exact).abs()
    assert ours.max() <= theirs.max() and ours.mean() <= theirs.mean()
    assert ours.max() < 1e-6


def test_unknown_surrogate_names_the_choices():
    with pytest.raises(ValueError, match="atan"):
        get_surrogate("relu")
