"""Checkpoints never trade a good state for a bad one; signals save; a validation error keeps the epoch."""
import os
import signal

import lightning.pytorch as pl
import pytest
import torch

from spikeloc.training import FPTTConfig
from spikeloc.training.callbacks import SafeCheckpoint, SignalCheckpoint
from .tiny import QuadrantData, tiny_classifier, trainer

BATCHES = 4  # per epoch: 64 samples / 16


def fit(tmp_path, module, callbacks, epochs=2, **kwargs):
    ckpt = SafeCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                          save_last=True)
    run = trainer(tmp_path, **{"max_epochs": epochs, "limit_val_batches": 1, "enable_checkpointing": True,
                               "callbacks": [*callbacks, ckpt, SignalCheckpoint()], **kwargs})
    run.fit(module, datamodule=QuadrantData(num_train=64))
    return ckpt


class Poison(pl.Callback):
    """Writes NaN into the first weight just before epoch ``epoch``'s validation."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_validation_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))


def load(path):
    return torch.load(path, weights_only=True)


def test_nonfinite_weights_are_never_written_and_the_good_checkpoint_is_kept(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="not finite, no checkpoint written"):
        fit(tmp_path, tiny_classifier(), [Poison(epoch=1)])
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["epoch000.ckpt", "last.ckpt"]  # save_top_k=1 did not delete epoch 0 for a NaN epoch 1
    for name in files:
        saved = load(tmp_path / "ckpt" / name)
        assert saved["epoch"] == 0 and all(torch.isfinite(t).all() for t in saved["state_dict"].values())


class FailingValidation(pl.Callback):
    def on_validation_batch_start(self, *args):
        raise OSError("cannot read image 'val/0001.jpg'")


def test_an_error_in_validation_keeps_the_training_epoch_before_it(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(OSError, match="0001.jpg"):
        fit(tmp_path, tiny_classifier(fptt=FPTTConfig(parts=2)), [FailingValidation()])
    saved = load(tmp_path / "ckpt" / "last.ckpt")
    assert saved["epoch"] == 0 and saved["global_step"] == 2 * BATCHES  # the whole epoch, written before validation
    resumed = trainer(tmp_path, max_epochs=2, limit_val_batches=1)
    resumed.fit(tiny_classifier(fptt=FPTTConfig(parts=2)), datamodule=QuadrantData(num_train=64),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), weights_only=True)
    assert resumed.global_step == 2 * 2 * BATCHES


class SendSignal(pl.Callback):
    """Sends ``signum`` to this process at the start of training batch ``batch`` (None: in the sanity check)."""

    def __init__(self, batch, signum):
        self.batch, self.signum = batch, signum

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)

    def on_sanity_check_start(self, trainer, module):
        if self.batch is None:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_resumable_checkpoint_mid_epoch_and_exits_non_zero(tmp_path, signum, caplog):
    torch.manual_seed(0)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job (nohup, '&'), else Python's
    with pytest.raises(SystemExit) as stop:
        fit(tmp_path, tiny_classifier(fptt=FPTTConfig(parts=2)), [SendSignal(batch=2, signum=signum)])
    assert stop.value.code == 128 + signum
    saved = load(tmp_path / "ckpt" / "last.ckpt")
    assert saved["epoch"] == 0 and saved["global_step"] == 2 * 3  # batch 2 finished, then stopped
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_served": 3}]
    assert f"{signal.Signals(signum).name}: stopped at epoch 0, step 6" in caplog.text and "Resume with:" in caplog.text
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back


def test_a_signal_before_the_first_update_saves_nothing(tmp_path):
    with pytest.raises(SystemExit) as stop:
        fit(tmp_path, tiny_classifier(), [SendSignal(batch=None, signum=signal.SIGTERM)], num_sanity_val_steps=2,
            limit_val_batches=2)
    assert stop.value.code == 128 + signal.SIGTERM
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()


class NoisyClassifier(type(tiny_classifier())):
    """Draws from the global RNG in every training step (input noise), so resuming must restore the RNG."""

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return super().training_step((images + 0.5 * torch.randn_like(images), labels), batch_idx)


def noisy():
    return NoisyClassifier(model="ltc_convnet", num_classes=4, in_channels=1, model_kwargs={"channels": [8, 16]},
                           num_steps=4, fptt=FPTTConfig(parts=2), optimizer=torch.optim.Adam)


def test_resume_mid_epoch_with_randomness_equals_the_uninterrupted_run(tmp_path):
    pl.seed_everything(0)
    straight = noisy()
    fit(tmp_path / "a", straight, [])
    pl.seed_everything(0)
    with pytest.raises(SystemExit):
        fit(tmp_path / "b", noisy(), [SendSignal(batch=1, signum=signal.SIGTERM)])
    torch.manual_seed(123)  # a resumed process starts from another RNG state
    resumed = noisy()
    run = trainer(tmp_path / "b", max_epochs=2, limit_val_batches=1, callbacks=[SignalCheckpoint()])
    run.fit(resumed, datamodule=QuadrantData(num_train=64), ckpt_path=str(tmp_path / "b" / "ckpt" / "last.ckpt"),
            weights_only=True)
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)


def test_the_end_of_training_is_saved_and_resuming_a_finished_run_writes_nothing(tmp_path):
    torch.manual_seed(0)  # the last epoch runs no validation (every 2nd epoch): Lightning saved nothing after it
    ckpt = fit(tmp_path, tiny_classifier(fptt=FPTTConfig(parts=2)), [], epochs=3, check_val_every_n_epoch=2)
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = load(last)
    assert saved["global_step"] == 3 * 2 * BATCHES and ckpt.last_model_path == str(last)
    before = (last.stat().st_mtime_ns, last.read_bytes())
    again = SafeCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_last=True)
    resumed = trainer(tmp_path, max_epochs=3, limit_val_batches=1, check_val_every_n_epoch=2, enable_checkpointing=True,
                      callbacks=[again, SignalCheckpoint()])
    resumed.fit(tiny_classifier(fptt=FPTTConfig(parts=2)), datamodule=QuadrantData(num_train=64), ckpt_path=str(last),
                weights_only=True)
    assert resumed.global_step == 3 * 2 * BATCHES and (last.stat().st_mtime_ns, last.read_bytes()) == before


class LastStep(pl.Callback):
    """Records, at the start of every training batch, the global step held by ``last.ckpt`` (None: none yet)."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(load(self.path)["global_step"] if self.path.exists() else None)


def test_step_checkpoints_count_optimizer_steps_k_per_batch(tmp_path):
    torch.manual_seed(0)
    seen = LastStep(tmp_path / "ckpt" / "last.ckpt")
    ckpt = SafeCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
    run = trainer(tmp_path, max_epochs=2, limit_val_batches=1, enable_checkpointing=True, callbacks=[seen, ckpt])
    run.fit(tiny_classifier(fptt=FPTTConfig(parts=2)), datamodule=QuadrantData(num_train=64))
    # steps after each batch: 2, 4, 6, 8 | 10, 12, 14, 16; a multiple of 3 is reached at 4, 6, 10, 12 and 16
    # (``last`` is also written before each validation: 8)
    assert seen.seen == [None, None, 4, 6, 8, 10, 12, 12]
    assert load(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 16


def test_step_checkpoints_need_last():
    with pytest.raises(ValueError, match="every_n_train_steps writes last.ckpt: it needs checkpoint.save_last"):
        SafeCheckpoint(every_n_train_steps=4)


def test_another_runs_last_checkpoint_in_the_folder_is_not_overwritten(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"other": torch.zeros(1)}, folder / "last.ckpt")
    before = (folder / "last.ckpt").read_bytes()
    ckpt = fit(tmp_path, tiny_classifier(), [], epochs=1)
    assert (folder / "last.ckpt").read_bytes() == before
    assert ckpt.last_model_path == str(folder / "last-v1.ckpt") and load(folder / "last-v1.ckpt")["global_step"] > 0
