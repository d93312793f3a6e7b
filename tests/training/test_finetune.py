"""Pretrain -> fine-tune: a pretrained spiking backbone starts a new task ahead of scratch."""
import timm
import torch

from spikeloc.models.backbones import load_pretrained
from .tiny import QuadrantData, tiny_classifier, trainer


def _first_epoch_loss(tmp_path, merged=False, **kwargs):
    torch.manual_seed(1)
    module = tiny_classifier(num_classes=3 if merged else 4, **kwargs)
    fit = trainer(tmp_path, limit_val_batches=0)
    fit.fit(module, datamodule=QuadrantData(merged=merged, seed=3))  # new samples
    return float(fit.callback_metrics["train/loss_epoch"]), module


def test_pretrained_checkpoint_fine_tunes_faster_than_scratch(tmp_path):
    torch.manual_seed(0)
    pretrain = tiny_classifier()
    fit = trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    fit.fit(pretrain, datamodule=QuadrantData())
    checkpoint = tmp_path / "pretrain.ckpt"
    fit.save_checkpoint(checkpoint)  # the Lightning checkpoint itself is the pretrained file

    scratch, _ = _first_epoch_loss(tmp_path)
    tuned, _ = _first_epoch_loss(tmp_path, pretrained=str(checkpoint))
    assert tuned < 0.5 * scratch
    _, module = _first_epoch_loss(tmp_path, merged=True, pretrained=str(checkpoint))
    assert module.net.fc.out_features == 3  # head re-initialised for the new number of classes


def test_frozen_backbone_does_not_move_but_head_does(tmp_path):
    module = tiny_classifier(freeze_backbone_epochs=1, algorithm="bptt")
    backbone = [p.detach().clone() for p in module.backbone_parameters()]
    head = module.net.fc.weight.detach().clone()
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(module, datamodule=QuadrantData())
    assert all(torch.equal(p, b) for p, b in zip(module.backbone_parameters(), backbone))
    assert not torch.equal(module.net.fc.weight, head)


def test_grayscale_pretraining_feeds_rgb_input(tmp_path):
    gray = timm.create_model("spyv4_tiny", in_chans=1, num_classes=5, width=0.25)
    torch.save(gray.state_dict(), tmp_path / "gray.pt")
    rgb = timm.create_model("spyv4_tiny", in_chans=3, num_classes=0, width=0.25)
    report = load_pretrained(rgb, tmp_path / "gray.pt")
    assert report.input_adapted == ["conv1.conv.weight"]
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(gray.conv1.conv(x), rgb.conv1.conv(x.repeat(1, 3, 1, 1)), atol=1e-6)
