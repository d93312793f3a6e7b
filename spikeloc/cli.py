"""The command line: Lightning's CLI (jsonargparse) with spikeloc's defaults and links.

One YAML file describes a whole run; any key can be overridden on the command line
(``--trainer.max_epochs 3``) and ``--print_config`` prints the resolved run back.
Unknown keys and wrong types are rejected by jsonargparse before anything is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from spikeloc.training.loop import OnlineModule

# model arguments the datamodule decides (linked when both have them, so a config says them once)
LINKED_FROM_DATA = ("num_classes", "in_channels", "image_size", "class_names")


class SpikelocCLI(LightningCLI):
    """``model`` and ``data`` are chosen by ``class_path``; the datamodule's ``num_classes``,
    ``in_channels``, ``image_size`` and ``class_names`` flow into the model (where it takes them);
    ``checkpoint`` configures ModelCheckpoint."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        super().__init__(OnlineModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         run=False, args=args, save_config_kwargs={"overwrite": True},
                         trainer_defaults={"default_root_dir": "runs"}, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume training exactly from this checkpoint (weights, optimizer, FPTT state).")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False})
        for key in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")


def train(args: Any = None) -> SpikelocCLI:
    """Build the run from config + overrides, train it, print where everything went."""
    cli = SpikelocCLI(args)
    trainer = cli.trainer
    ckpt_path = cli.config.get("ckpt_path")
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    if trainer.is_global_zero:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        print(f"\nrun folder: {run_dir}")
        if trainer.checkpoint_callback is not None:
            print(f"last checkpoint: {trainer.checkpoint_callback.last_model_path}")
        for name, value in sorted(trainer.callback_metrics.items()):
            print(f"  {name}: {float(value):.4f}")
    return cli
