"""StreamingDetector: the loss and the metric leave windows without a label out, evaluation carries the
state over consecutive windows, and a run on GEN1's sequential batches trains and validates end to end."""
import functools
import json

import torch

from datamodules.events.gen1 import GEN1DataModule
from spikeloc.cli import train
from spikeloc.training.carry import StreamingDetector
from spikeloc.training.detection import SpikingDetector
from tests.datamodules.events.test_gen1_sequential import write_root

ANCHORS = [[(8, 8), (12, 12), (16, 16)], [(20, 20), (28, 28), (40, 40)]]
KWARGS = dict(backbone="spyv4_tiny", backbone_kwargs={"width": 0.125}, num_classes=2, in_channels=2, image_size=64,
              anchors=ANCHORS, num_steps=2, check_anchors=False)


def _target(x0: float, label: int) -> dict:
    return {"boxes": torch.tensor([[x0, 10.0, x0 + 20.0, 34.0]]), "labels": torch.tensor([label])}


def test_the_loss_leaves_the_unlabelled_rows_out():
    torch.manual_seed(0)
    module = StreamingDetector(**KWARGS, optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    output = [torch.randn(3, 3, 4, 4, 7, requires_grad=True), torch.randn(3, 3, 2, 2, 7, requires_grad=True)]
    batch = {"targets": [_target(4.0, 0), _target(30.0, 1), _target(12.0, 1)],
             "labelled": torch.tensor([True, False, True])}
    module._rows = module.labelled_rows(batch)
    assert module._rows == [0, 2]
    got = module.step_loss(output, batch)
    kept = {"targets": [batch["targets"][0], batch["targets"][2]]}
    expected = SpikingDetector.step_loss(module, [raw[[0, 2]] for raw in output], kept)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)
    everything = SpikingDetector.step_loss(module, output, batch)
    assert not torch.allclose(everything["loss"], got["loss"])  # the middle row counts when left in
    module._rows = []
    nothing = module.step_loss(output, batch)
    nothing["loss"].backward()
    assert float(nothing["loss"]) == 0.0 and torch.isfinite(nothing["loss"])


class Recorded(StreamingDetector):
    """Keeps the raw outputs of every evaluation step."""

    evaluated: list = []

    def forward_step(self, x_t, state):
        output, state = super().forward_step(x_t, state)
        if not self.training:
            self.evaluated.append([raw.detach().clone() for raw in output])
        return output, state


def test_validation_carries_the_state_over_a_recordings_windows_and_scores_labelled_ones(tmp_path):
    root = write_root(tmp_path / "data", evaluated=1)
    data = GEN1DataModule(str(root), num_steps=2, window_us=50_000, image_size=64, batch_size=1, sequential=True)
    torch.manual_seed(0)
    module = Recorded(**KWARGS, conf_threshold=0.0)
    module.evaluated = []
    from tests.training.tiny import trainer
    trainer(tmp_path).validate(module, datamodule=data, verbose=False)
    dataset = data.val_set
    windows = dataset.lengths[0]
    frames = torch.cat([dataset[w]["image"] for w in range(windows)])  # the recording's frames, window after window
    module.eval()
    state, reference = None, []
    with torch.no_grad():
        for t in range(len(frames)):
            output, state = SpikingDetector.forward_step(module, frames[t:t + 1], state)
            reference.append(output)
    assert len(module.evaluated) == len(reference) == 2 * windows
    for got, expected in zip(module.evaluated, reference):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    labelled = sum(dataset[w]["labelled"] for w in range(windows))
    assert 0 < labelled < windows and len(module.maps[-1].images) == labelled  # scored: the labelled windows only


def test_a_streaming_detector_trains_on_sequential_gen1_batches_end_to_end(tmp_path):
    root = write_root(tmp_path / "data")
    model = {"class_path": "spikeloc.training.carry.StreamingDetector", "init_args": {
        "backbone": "spyv4_tiny", "backbone_kwargs": {"width": 0.125}, "anchors": ANCHORS, "check_anchors": False,
        "fptt": {"parts": 2}}}
    data = {"class_path": "datamodules.events.gen1.GEN1DataModule", "init_args": {
        "root": str(root), "num_steps": 2, "window_us": 50_000, "image_size": 64, "batch_size": 2, "sequential": True}}
    cli = train(["--model", json.dumps(model), "--data", json.dumps(data), "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "3", "--trainer.logger", "false", "--trainer.enable_progress_bar",
                 "false", "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu"])
    assert cli.trainer.global_step == 3 * 2 and "val/map_50" in cli.trainer.callback_metrics
    saved = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert saved["carried_state"] is not None and saved["datamodule_hyper_parameters"]["sequential"]
