"""No host sync inside the time loop, checked on the CPU (README "Speed"): every op that would stall
a GPU's host is caught by dispatch (:mod:`tests.host_syncs`). After a warm-up batch, a training
batch may read back one value: the non-finite guard's count (``NonFiniteGuard.check``), once per
batch, after its K updates. On a CPU the guard also reads its flag before (inside the optimizer step)
and after each update, and FPTT reads it to keep or drop its staged update and reads the penalty's upstream
gradient (nothing to stall there);
the device path a GPU takes is checked
with those reads switched off (FPTT then updates in place, as on a GPU)."""
import pytest
import torch

from spikeloc.training import FPTTConfig
from spikeloc.training.fptt import FPTT
from spikeloc.training.guard import NonFiniteGuard
from tests.host_syncs import HostSyncs
from .test_detection_module import shapes, tiny_detector
from .tiny import QuadrantData, tiny_classifier, trainer

GUARD_CHECK = "spikeloc/training/guard.py"
FPTT_ACCEPT = "spikeloc/training/fptt.py"


def _syncs_per_batch(tmp_path, module, data, batches=3):
    """Syncs of every training batch after the first (the first warms lazy state up)."""
    inner, found = module.training_step, []

    def watched(batch, batch_idx):
        if batch_idx == 0:
            return inner(batch, batch_idx)
        with HostSyncs() as syncs:
            result = inner(batch, batch_idx)
        found.append(syncs)
        return result

    module.training_step = watched
    trainer(tmp_path, max_epochs=1, limit_train_batches=batches, limit_val_batches=0).fit(module, datamodule=data)
    assert len(found) == batches - 1
    return found


def _outside_the_guard(found, allowed=(GUARD_CHECK,)):
    return [s for syncs in found for s in syncs if not s.in_optimizer and not s.site.startswith(allowed)]


@pytest.fixture
def device_path(monkeypatch):
    monkeypatch.setattr(NonFiniteGuard, "read_cpu_flag", False)
    monkeypatch.setattr(FPTT, "_staging", lambda self: False)


@pytest.mark.parametrize("algorithm", ["fptt", "bptt"])
def test_a_detector_batch_reads_back_only_the_guard(tmp_path, algorithm, device_path):
    torch.manual_seed(0)
    module = tiny_detector(algorithm=algorithm, fptt=FPTTConfig(parts=2, consolidate=False))
    found = _syncs_per_batch(tmp_path, module, shapes(num_train=12))
    assert _outside_the_guard(found) == []
    assert all(sum(s.site.startswith(GUARD_CHECK) for s in syncs) == 1 for syncs in found)  # one per batch


def test_on_the_cpu_the_guard_flag_is_read_after_each_update(tmp_path):
    torch.manual_seed(0)
    module = tiny_detector(fptt=FPTTConfig(parts=2, consolidate=False))
    found = _syncs_per_batch(tmp_path, module, shapes(num_train=12))
    assert _outside_the_guard(found, (GUARD_CHECK, FPTT_ACCEPT)) == []
    reads = [sorted(s.site.split()[1] for s in syncs if not s.in_optimizer) for syncs in found]
    # per update: the penalty's upstream gradient (1: its staged gradient is used as it is), the guard's flag
    # and FPTT's; then the count
    assert reads == [["accept", "accept", "backward", "backward", "check", "commit", "commit"]] * 2


def test_a_classifier_batch_reads_back_only_the_guard(tmp_path, device_path):
    torch.manual_seed(0)
    module = tiny_classifier(num_steps=4, fptt=FPTTConfig(parts=4, consolidate=False))
    assert _outside_the_guard(_syncs_per_batch(tmp_path, module, QuadrantData())) == []


def test_a_sync_in_the_time_loop_is_caught(tmp_path, device_path):
    module = tiny_detector(fptt=FPTTConfig(parts=2, consolidate=False))
    step_loss = module.step_loss

    def logs_a_float(output, batch):
        parts = step_loss(output, batch)
        print(float(parts["box"]))  # what a careless debug line does: one sync per step
        return parts

    module.step_loss = logs_a_float
    found = _outside_the_guard(_syncs_per_batch(tmp_path, module, shapes(num_train=12)))
    assert [s.op for s in found] == ["aten._local_scalar_dense.default"] * 4  # 2 steps x 2 watched batches
    assert all("test_host_syncs.py" in s.site and "logs_a_float" in s.site for s in found)
