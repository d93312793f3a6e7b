"""Two CPU processes (gloo): every per-step FPTT update is all-reduced, so ranks stay identical."""
import functools

import lightning.pytorch as pl
import pytest
import torch

from spikeloc import kernels
from spikeloc.training import FPTTConfig
from .tiny import QuadrantData, tiny_classifier, trainer


class SaveRankState(pl.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, module):
        torch.save({"params": [p.detach().clone() for p in module.parameters()],
                    "fptt": module.fptt.state_dict(), "steps": trainer.global_step,
                    "fptt_backend": module.fptt.backend},
                   self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("fptt_backend", ["eager", pytest.param("cpu_kernels", marks=pytest.mark.skipif(
    not kernels.available(), reason="the CPU kernels cannot be built here"))])
def test_ddp_ranks_stay_identical(tmp_path, fptt_backend):
    torch.manual_seed(0)
    module = tiny_classifier(fptt=FPTTConfig(parts=2, consolidate=False, backend=fptt_backend),
                             optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    initial = [p.detach().clone() for p in module.parameters()]
    fit = trainer(tmp_path, strategy="ddp_spawn", devices=2, limit_train_batches=3, limit_val_batches=0,
                  callbacks=[SaveRankState(tmp_path)])
    fit.fit(module, datamodule=QuadrantData(num_train=96))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 3 * 2
    assert rank0["fptt_backend"] == rank1["fptt_backend"] == fptt_backend
    for a, b, start in zip(rank0["params"], rank1["params"], initial):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, s) for a, s in zip(rank0["params"], initial))
    for a, b in zip(rank0["fptt"]["running"] + rank0["fptt"]["trace"],
                    rank1["fptt"]["running"] + rank1["fptt"]["trace"]):
        assert torch.equal(a, b)
