"""Training over consecutive windows: the state carried across batches equals one long run."""
import torch
from torch.utils.data import TensorDataset

from datamodules.common import make_loader
from spikeloc.training import SpikingClassifier
from spikeloc.training.carry import CarryStateMixin
from tests.training.tiny import trainer


class Recorder(CarryStateMixin, SpikingClassifier):
    """Keeps every training step's output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def forward_step(self, x_t, state):
        output, state = super().forward_step(x_t, state)
        if self.training:
            self.seen.append(output.detach().clone())
        return output, state


def _module():
    """A recurrent dense LTC-SN net (no batch norm: rows are independent); lr 0 keeps the weights."""
    torch.manual_seed(0)
    return Recorder(model="srnn_ltc", num_classes=3, in_channels=6, model_kwargs={"hidden": [16]},
                    optimizer=lambda params: torch.optim.SGD(params, lr=0.0))


def _stream(x, y, reset, tmp_path):
    """Train on x [R, T, D] cut into windows of 4 (batch w = window w of every row); outputs [R, T, 3]."""
    windows = x.split(4, dim=1)
    flags = torch.stack([reset(w) for w in range(len(windows))])
    data = TensorDataset(torch.cat(windows), y.repeat(len(windows)), flags.flatten())
    module = _module()
    trainer(tmp_path, max_epochs=1).fit(module, train_dataloaders=make_loader(data, len(x), shuffle=False))
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
