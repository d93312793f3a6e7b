import pytest
import torch
from torch._dynamo.utils import counters  # no public count of compiled graphs


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where no CUDA GPU is (``make gpu-check`` runs them where one is)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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
