"""A tiny learnable classification task for loop tests: which quadrant holds the blob."""
import lightning.pytorch as pl
import torch
from torch.utils.data import TensorDataset

from datamodules.common import make_loader


def quadrant_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.3 * torch.randn(n, 1, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[index, 0, row * 4:row * 4 + 4, col * 4:col * 4 + 4] += 2.0
    return TensorDataset(images, labels)


class QuadrantData(pl.LightningDataModule):
    """Four classes (which quadrant), or with ``merged=True`` three (the bottom quadrants merged)."""

    in_channels = 1

    def __init__(self, num_train: int = 128, batch_size: int = 16, seed: int = 0, merged: bool = False) -> None:
        super().__init__()
        self.train_set, self.val_set = quadrant_data(num_train, seed), quadrant_data(64, seed + 1)
        if merged:
            for dataset in (self.train_set, self.val_set):
                dataset.tensors = (dataset.tensors[0], dataset.tensors[1].clamp(max=2))
        self.num_classes = 3 if merged else 4
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self):
        return make_loader(self.train_set, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self):
        return make_loader(self.val_set, 32, shuffle=False)


def tiny_classifier(**kwargs):
    from spikeloc.training import SpikingClassifier
    defaults = dict(model="ltc_convnet", num_classes=4, in_channels=1, model_kwargs={"channels": [8, 16]},
                    num_steps=4, optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    return SpikingClassifier(**{**defaults, **kwargs})


def trainer(tmp_path, **kwargs):
    defaults = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                    default_root_dir=str(tmp_path))
    return pl.Trainer(**{**defaults, **kwargs})


class PauseAt(pl.Callback):
    """Test helper: after training batch ``batch`` (counted over epochs) write ``marker`` and wait
    until a signal arrives (SIGTERM sets ``trainer.received_sigterm``; SIGKILL ends the process)."""

    def __init__(self, batch: int, marker: str, timeout: float = 60.0) -> None:
        self.batch, self.marker, self.timeout, self.seen = batch, marker, timeout, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        import time
        from pathlib import Path
        self.seen += 1
        if self.seen - 1 != self.batch:
            return
        Path(self.marker).write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)
