"""Training and evaluating over consecutive windows: the state carried across batches equals one long run,
also after a resume in the middle of an epoch."""
import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from datamodules.common import make_loader
from spikeloc.training import SpikingClassifier
from spikeloc.training.carry import CarryStateMixin
from tests.training.tiny import trainer


class Recorder(CarryStateMixin, SpikingClassifier):
    """Keeps every training step's output (``seen``) and every evaluation step's (``evaluated``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen, self.evaluated = [], []

    def forward_step(self, x_t, state):
        output, state = super().forward_step(x_t, state)
        (self.seen if self.training else self.evaluated).append(output.detach().clone())
        return output, state


def _module():
    """A recurrent dense LTC-SN net (no batch norm: rows are independent); lr 0 keeps the weights."""
    torch.manual_seed(0)
    return Recorder(model="srnn_ltc", num_classes=3, in_channels=6, model_kwargs={"hidden": [16]},
                    optimizer=lambda params: torch.optim.SGD(params, lr=0.0))


def _windows(x, y, reset=None):
    """x [R, T, D] cut into windows of 4: item w * R + r is window w of row r (with its reset flag)."""
    windows = x.split(4, dim=1)
    if reset is None:
        return TensorDataset(torch.cat(windows), y.repeat(len(windows)))
    flags = torch.stack([reset(w) for w in range(len(windows))])
    return TensorDataset(torch.cat(windows), y.repeat(len(windows)), flags.flatten())


def _stream(x, y, reset, tmp_path):
    """Train on the windows of x (batch w = window w of every row); outputs [R, T, 3]."""
    module = _module()
    loader = make_loader(_windows(x, y, reset), len(x), shuffle=False)
    trainer(tmp_path, max_epochs=1).fit(module, train_dataloaders=loader)
    return torch.stack(module.seen, 1)


def _long_run(x):
    module, outputs, state = _module(), [], None
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, state = SpikingClassifier.forward_step(module, x[:, t], state)
            outputs.append(out)
    return torch.stack(outputs, 1)


def test_carried_state_equals_one_long_run(tmp_path):
    x = torch.rand(3, 12, 6, generator=torch.Generator().manual_seed(0)) * 4
    y = torch.tensor([0, 1, 2])
    reference = _long_run(x)
    assert not torch.allclose(reference[:, 4:8], _long_run(x[:, 4:8]))  # the state matters
    streamed = _stream(x, y, lambda w: torch.zeros(3, dtype=torch.bool), tmp_path)
    torch.testing.assert_close(streamed, reference, rtol=0, atol=1e-6)


def test_reset_rows_start_fresh_and_the_others_carry_on(tmp_path):
    x = torch.rand(3, 12, 6, generator=torch.Generator().manual_seed(1)) * 4
    streamed = _stream(x, torch.tensor([0, 1, 2]), lambda w: torch.tensor([False, w == 2, False]), tmp_path)
    reference = _long_run(x)
    torch.testing.assert_close(streamed[[0, 2]], reference[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(streamed[1, :8], reference[1, :8], rtol=0, atol=1e-6)
    torch.testing.assert_close(streamed[1, 8:], _long_run(x[1:2, 8:])[0], rtol=0, atol=1e-6)  # new recording


def test_evaluation_carries_the_state_when_batches_have_reset_flags(tmp_path):
    x = torch.rand(3, 12, 6, generator=torch.Generator().manual_seed(2)) * 4
    y = torch.tensor([0, 1, 2])
    module = _module()
    flags = lambda w: torch.tensor([False, w == 1, False])  # noqa: E731  row 1 starts a new recording at window 1
    trainer(tmp_path).validate(module, make_loader(_windows(x, y, flags), 3, shuffle=False), verbose=False)
    carried = torch.stack(module.evaluated, 1)
    reference = _long_run(x)
    torch.testing.assert_close(carried[[0, 2]], reference[[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(carried[1, 4:], _long_run(x[1:2, 4:])[0], rtol=0, atol=1e-6)
    module.evaluated.clear()  # a second validation epoch starts fresh again
    trainer(tmp_path).validate(module, make_loader(_windows(x, y, flags), 3, shuffle=False), verbose=False)
    torch.testing.assert_close(torch.stack(module.evaluated, 1), carried, rtol=0, atol=0)
    module.evaluated.clear()  # without flags every batch is independent
    trainer(tmp_path).validate(module, make_loader(_windows(x, y), 3, shuffle=False), verbose=False)
    independent = torch.stack(module.evaluated, 1)
    torch.testing.assert_close(independent[:, 4:8], _long_run(x[:, 4:8]), rtol=0, atol=1e-6)


class SaveAt(pl.Callback):
    """Saves a checkpoint after training batch ``batch_idx`` (as ``ModelCheckpoint(every_n_train_steps)`` does)."""

    def __init__(self, batch_idx, path):
        self.batch_idx, self.path = batch_idx, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)


def test_a_run_resumed_in_the_middle_of_an_epoch_continues_its_streams(tmp_path):
    x = torch.rand(3, 16, 6, generator=torch.Generator().manual_seed(3)) * 4
    y, still = torch.tensor([0, 1, 2]), lambda w: torch.zeros(3, dtype=torch.bool)  # noqa: E731
    straight = _module()
    loader = make_loader(_windows(x, y, still), 3, shuffle=False)
    trainer(tmp_path, callbacks=[SaveAt(1, tmp_path / "mid.ckpt")]).fit(straight, train_dataloaders=loader)
    assert torch.load(tmp_path / "mid.ckpt", weights_only=True)["carried_state"] is not None
    resumed = _module()
    trainer(tmp_path).fit(resumed, train_dataloaders=make_loader(_windows(x, y, still), 3, shuffle=False),
                          ckpt_path=tmp_path / "mid.ckpt", weights_only=True)
    assert len(resumed.seen) == 8  # the last two windows
    torch.testing.assert_close(torch.stack(resumed.seen, 1), torch.stack(straight.seen, 1)[:, 8:], rtol=0, atol=1e-6)
    fresh = _module()  # the positive control: without the carried state the third window differs
    trainer(tmp_path).fit(fresh, train_dataloaders=make_loader(_windows(x[:, 8:], y, still), 3, shuffle=False))
    assert not torch.allclose(torch.stack(fresh.seen, 1), torch.stack(straight.seen, 1)[:, 8:])
