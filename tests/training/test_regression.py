"""Add task data and the spiking regressor on the shared FPTT loop."""
import numpy as np
import torch

from datamodules.sequences.add_task import AddTaskDataModule, generate_add_task
from spikeloc.training.loop import FPTTConfig
from spikeloc.training.regression import SpikingRegressor
from tests.training.tiny import trainer


def test_add_task_sequences_follow_the_definition():
    x, y = generate_add_task(64, 10, np.random.default_rng(0))
    assert x.shape == (64, 10, 2) and y.shape == (64, 10)
    for values, markers, target in zip(x[..., 0], x[..., 1], y):
        marked = markers.nonzero().flatten().tolist()
        assert len(marked) == 2 and marked[0] < 5 <= marked[1]
        running = 0.0
        for t in range(10):  # plain loop reference of the running sum
            running += float(values[t]) * float(markers[t])
            assert abs(float(target[t]) - running) < 1e-6
    again = generate_add_task(64, 10, np.random.default_rng(0))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_regressor_targets_each_step_and_learns_the_add_task(tmp_path):
    torch.manual_seed(0)
    data = AddTaskDataModule(seq_len=10, num_train=512, num_val=256, batch_size=64)
    module = SpikingRegressor(model_kwargs={"hidden": [64]}, fptt=FPTTConfig(alpha=0.5, parts=10, consolidate=False),
                              optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    y = torch.arange(6.0).view(2, 3)
    assert module.target_at(y, 1).tolist() == [[1.0], [4.0]]
    assert module.target_at(torch.tensor([2.0, 3.0]), 1).tolist() == [[2.0], [3.0]]
    run = trainer(tmp_path, max_epochs=16)
    run.fit(module, datamodule=data)
    after = run.callback_metrics["val/mse"].item()
    assert run.global_step == 16 * 8 * 10  # K = 10 optimizer steps per batch
    final = data.split("val").tensors[1][:, -1]
    baseline = ((final - final.mean()) ** 2).mean().item()  # best constant answer, about 1/6
    print(f"val mse {after:.4f}, best constant {baseline:.4f}")
    assert after < 0.5 * baseline
