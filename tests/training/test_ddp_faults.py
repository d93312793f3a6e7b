"""One DDP rank raising ends every rank with that rank's error, without a hang (two gloo processes)."""
import functools
import time

import pytest
import torch

from spikeloc.training import SpikingClassifier
from .tiny import QuadrantData, trainer


class RankFailure(RuntimeError):
    pass


class FailingClassifier(SpikingClassifier):
    """The tiny classifier; rank ``rank`` raises at training batch ``batch`` (picklable for ddp_spawn)."""

    def __init__(self, rank: int, batch: int) -> None:
        super().__init__(model="ltc_convnet", num_classes=4, in_channels=1, model_kwargs={"channels": [8, 16]},
                         num_steps=4, optimizer=functools.partial(torch.optim.Adam, lr=0.01))
        self.fail_rank, self.fail_batch = rank, batch

    def training_step(self, batch, batch_idx):
        if self.global_rank == self.fail_rank and batch_idx == self.fail_batch:
            raise RankFailure(f"rank {self.fail_rank} failed at batch {self.fail_batch}")
        return super().training_step(batch, batch_idx)


@pytest.mark.slow  # two spawned processes: ~50 s on 2 shared cores
@pytest.mark.timeout(180)
def test_one_rank_raising_ends_all_ranks_with_its_error(tmp_path, rank=1):  # rank 0 is then waiting in all-reduce
    torch.manual_seed(0)
    fit = trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    start = time.monotonic()
    with pytest.raises(Exception, match=f"rank {rank} failed at batch 2") as err:
        fit.fit(FailingClassifier(rank, 2), datamodule=QuadrantData(num_train=96))
    assert "RankFailure" in str(err.value) or isinstance(err.value, RankFailure)
    assert time.monotonic() - start < 120
