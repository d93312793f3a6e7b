import pytest
import torch
from torch._dynamo.utils import counters

# The test models are tiny: one thread avoids oversubscribing small CI machines, where
# per-op thread hand-offs cost more than the arithmetic.
torch.set_num_threads(1)


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters empty before and after the test (graph counts start at 0)."""
    torch.compiler.reset()
    counters.clear()
    yield
    torch.compiler.reset()
