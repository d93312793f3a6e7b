"""``channels_last``: 4-D weights, inputs and state in NHWC, the same training as the default layout
(reference: the same run with ``channels_last`` off), also when resuming a checkpoint of a run without it."""
import lightning.pytorch as pl
import pytest
import torch
from lightning_utilities import apply_to_collection
from torch.utils._python_dispatch import TorchDispatchMode  # the documented extension point; no public path

from .test_detection_module import shapes, tiny_detector
from .tiny import QuadrantData, tiny_classifier, trainer


def _fit(tmp_path, channels_last, max_epochs=1, ckpt_path=None, save=None, val_batches=0):
    torch.manual_seed(0)
    module = tiny_classifier(channels_last=channels_last,
                             optimizer=lambda params: torch.optim.Adam(params, lr=0.01, fused=True))
    run = trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=3,
                  limit_val_batches=val_batches)
    run.fit(module, datamodule=QuadrantData(), ckpt_path=ckpt_path)
    if save:
        run.save_checkpoint(save)
    return module, run


def _assert_same_weights(a, b):
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), name


def test_channels_last_trains_like_the_default_layout(tmp_path):
    default, reference = _fit(tmp_path, False, val_batches=1)
    module, run = _fit(tmp_path, True, val_batches=1)
    metrics, expected = run.callback_metrics, reference.callback_metrics  # evaluation runs NHWC too
    assert torch.allclose(metrics["val/loss"], expected["val/loss"], rtol=1e-4) and metrics["val/acc"] == expected["val/acc"]
    convs = [p for p in module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    optimizer = run.optimizers[0]
    assert all(v.stride() == p.stride() for p in convs for v in optimizer.state[p].values() if v.dim() == 4)
    assert [t.stride() for t in module.fptt.running] == [p.stride() for p in module.parameters()]
    _assert_same_weights(default, module)
    assert any(not torch.equal(p, q) for p, q in zip(default.parameters(), tiny_classifier().parameters()))


def test_resuming_a_default_layout_checkpoint_with_channels_last(tmp_path):
    """A contiguous checkpoint's Adam state is put in the channels-last layout before the first step:
    ``Adam(fused=True)`` reads state and weights in memory order, so mixed layouts would corrupt it."""
    checkpoint = str(tmp_path / "default.ckpt")
    _fit(tmp_path, False, save=checkpoint)
    default, _ = _fit(tmp_path, False, max_epochs=2, ckpt_path=checkpoint)
    module, _ = _fit(tmp_path, True, max_epochs=2, ckpt_path=checkpoint)
    _assert_same_weights(default, module)


def _tensors(value) -> list:
    """The tensors inside ``value`` (nested tuples, lists and dicts)."""
    found = []
    apply_to_collection(value, torch.Tensor, found.append)
    return found


def _spatial(t) -> bool:
    """A 4-D tensor whose NCHW and NHWC layouts differ (more than one channel and one pixel)."""
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1


class LayoutBreaks(TorchDispatchMode, pl.Callback):
    """Names the ops of each training batch that take a channels-last 4-D tensor and return one that is not."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        channels_last = [t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                         for t in _tensors((args, kwargs)) if _spatial(t)]
        if any(channels_last) and any(not t.is_contiguous(memory_format=torch.channels_last)
                                      for t in _tensors(out) if _spatial(t)):
            self.ops.add(str(func))
        return out

    def on_train_batch_start(self, *args):
        self.__enter__()

    def on_train_batch_end(self, *args):
        self.__exit__(None, None, None)


@pytest.mark.parametrize("backend", ["eager", "fused", "auto"])
def test_a_channels_last_detector_batch_stays_channels_last(tmp_path, backend):
    # an op that hands back NCHW makes every batch norm and convolution behind it convert layouts; ``auto`` runs
    # the fused step on channels-last tensors (the CPU kernels take NCHW ones)
    module = tiny_detector(channels_last=True, backbone_kwargs={"width": 0.125, "backend": backend})
    breaks = LayoutBreaks()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[breaks]).fit(
        module, datamodule=shapes())
    # the CSP blocks' channel split is a strided view, and its backward pads the gradient with zeros
    assert breaks.ops <= {"aten.slice.Tensor", "aten.slice_backward.default"}
    assert "aten.slice.Tensor" in breaks.ops  # the probe saw the batch
