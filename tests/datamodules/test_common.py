"""The shared loader: an epoch's order from seed + epoch only, and a mid-epoch resume that serves exactly the
batches an uninterrupted epoch would have served after the saved point, loading none of the others."""
import pytest
import torch
from torch.utils.data import Dataset

from datamodules.common import make_loader


class Indices(Dataset):
    """Item ``i`` is ``i``; every item read is recorded (in the main process)."""

    def __init__(self, size: int) -> None:
        self.size, self.read = size, []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        self.read.append(index)
        return torch.tensor(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumes_mid_epoch_with_the_batches_left(workers):
    loader = make_loader(Indices(22), 4, shuffle=True, seed=3, num_workers=workers)
    loader.sampler.set_epoch(2)  # what Lightning calls
    epoch = [b.tolist() for b in loader]
    assert sorted(sum(epoch, [])) == list(range(22)) and len(epoch) == 6
    served = iter(loader)
    for _ in range(4):
        next(served)
    state = loader.state_dict()
    assert state == {"batches_served": 4}
    dataset = Indices(22)
    resumed = make_loader(dataset, 4, shuffle=True, seed=3, num_workers=workers)
    resumed.sampler.set_epoch(2)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == epoch[4:]
    assert resumed.state_dict() == {"batches_served": 6}
    if not workers:
        assert sorted(dataset.read) == sorted(sum(epoch[4:], []))  # nothing read for the batches served before
    assert [b.tolist() for b in resumed] == epoch  # the next pass is a whole epoch again


def test_a_finished_epoch_resumes_at_the_next_one():
    loader = make_loader(Indices(8), 4, shuffle=False)
    loader.load_state_dict({"batches_served": 2})
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
