"""FiringMonitor: per-layer firing logged during training, warnings for silent and saturated layers."""
import pytest
import torch

from spikeloc.training.firing_monitor import FiringMonitor, firing_problems
from tests.training.tiny import QuadrantData, tiny_classifier, trainer


def test_firing_problems_classifies_layers():
    rates = {"a": 0.0, "b": 0.0005, "c": 0.2, "d": 0.95}
    assert firing_problems(rates, 0.001, 0.9) == {"a": "silent", "b": "silent", "d": "saturated"}


def test_monitor_warns_on_a_silent_layer_and_logs_rates(tmp_path):
    model = tiny_classifier(model_kwargs={"channels": [8, 16], "threshold": 1e6})  # nothing can fire
    monitor = FiringMonitor(every_n_batches=2)
    with pytest.warns(UserWarning, match=r"layer cells\.0 is silent"):
        trainer(tmp_path, callbacks=[monitor], max_steps=12, limit_val_batches=0).fit(model, QuadrantData())
    assert monitor.last_rates and all(rate == 0.0 for rate in monitor.last_rates.values())
    assert not model.firing_meters and not monitor._counting  # nothing counted between measured batches


def test_monitor_is_quiet_on_a_healthy_network(tmp_path, recwarn):
    model = tiny_classifier(model_kwargs={"channels": [8, 16], "threshold": 0.3})
    monitor = FiringMonitor(every_n_batches=1, silent_below=1e-4, saturated_above=0.99)
    trainer(tmp_path, callbacks=[monitor], max_steps=8, limit_val_batches=0).fit(model, QuadrantData())
    assert all(0 < rate < 0.99 for rate in monitor.last_rates.values())
    assert not [w for w in recwarn if "firing rate" in str(w.message)]


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_measured_batches_train_as_the_others(tmp_path, backend):
    """The monitor reads the states the steps return: the same training, bit for bit, with or without it (also
    with the CPU kernels, which forward hooks used to switch off)."""
    runs = []
    for monitors in ([], [FiringMonitor(every_n_batches=1)]):
        torch.manual_seed(0)
        model = tiny_classifier(model_kwargs={"channels": [8, 16], "threshold": 0.3, "backend": backend})
        trainer(tmp_path, callbacks=monitors, max_steps=6, limit_val_batches=0).fit(model, QuadrantData())
        runs.append([p.detach().clone() for p in model.parameters()] + list(model.buffers()))
    assert monitors[0].last_rates
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="every_n_batches"):
        FiringMonitor(every_n_batches=0)
