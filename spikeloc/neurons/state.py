"""The one place that walks explicit recurrent state.

State is any nesting of dicts, lists and tuples whose leaves are tensors of shape
``[B, ...]`` (batch first) or ``None``; ``None`` as a whole means fresh state.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

State = Any


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor leaf, keeping the structure."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {key: map_state(fn, value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, value) for value in state)
    if state is None:
        return None
    raise TypeError(f"state leaves must be tensors, got {type(state).__name__}")


def detach_state(state: State) -> State:
    """Cut the autograd history of every leaf (truncation point for FPTT / TBPTT)."""
    return map_state(Tensor.detach, state)


def reset_state(state: State, mask: Tensor) -> State:
    """Zero the state of the samples where ``mask`` (bool ``[B]``) is True.

    Zero is every neuron's fresh state, so a reset sample continues exactly as if
    it had started with ``state=None``.
    """

    def reset(leaf: Tensor) -> Tensor:
        keep = ~mask.view(-1, *([1] * (leaf.dim() - 1)))
        return torch.where(keep, leaf, torch.zeros((), dtype=leaf.dtype, device=leaf.device))

    return map_state(reset, state)
