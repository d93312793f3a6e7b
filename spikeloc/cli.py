"""The command line: Lightning's CLI (jsonargparse) with spikeloc's defaults and links.

One YAML file describes a whole run; any key can be overridden on the command line
(``--trainer.max_epochs 3``) and ``--print_config`` prints the resolved run back.
Unknown keys and wrong types are rejected by jsonargparse before anything is built, and so are
values outside what is allowed (:mod:`spikeloc.config_checks`); flags are never abbreviated.
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from spikeloc.allocator import hold_freed_memory
from spikeloc.checkpoints import CheckpointError, check_architecture, claim_version, load_checkpoint, resolve_last
from spikeloc.config_checks import ConfigError, check_config_files, check_run_config
from spikeloc.training.callbacks import ConfiguredOptimization, SafeCheckpoint, SignalCheckpoint
from spikeloc.training.guard import NonFiniteError
from spikeloc.training.loop import OnlineModule

# model arguments the datamodule decides (linked when both have them, so a config says them once)
LINKED_FROM_DATA = ("num_classes", "in_channels", "image_size", "class_names")


class SpikelocCLI(LightningCLI):
    """``model`` and ``data`` are chosen by ``class_path``; the datamodule's ``num_classes``,
    ``in_channels``, ``image_size`` and ``class_names`` flow into the model (where it takes them), and
    so does its ``num_steps`` where the data is configured with one (:func:`link_sequence_length`);
    ``checkpoint`` configures :class:`SafeCheckpoint` (Lightning's ModelCheckpoint that never writes
    non-finite weights); SIGTERM/SIGINT save a resumable checkpoint; a new run's ``version_N`` folder is
    made before anything is built (:func:`~spikeloc.checkpoints.claim_version`); a resumed run must fit its
    checkpoint and takes the optimizer and schedule settings of its config (:class:`ConfiguredOptimization`);
    glibc keeps freed tensors for the next time step (:func:`~spikeloc.allocator.hold_freed_memory`)."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        hold_freed_memory()
        self.raw_args = args
        super().__init__(OnlineModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         run=False, args=args, save_config_kwargs={"overwrite": True},
                         trainer_defaults={"default_root_dir": "runs"}, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _ints_before_floats(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume training exactly from this checkpoint (weights, optimizer, FPTT state).")
        parser.add_lightning_class_args(SafeCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False})
        for key in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(allow_abbrev=False, **kwargs)  # --trainer.max_epoch is an error, not max_epochs

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            check_config_files(sys.argv[1:] if args is None else args)
        except ConfigError as err:
            parser.error(str(err))
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        try:  # value checks and `--ckpt_path last`, before anything is built or any folder made
            link_sequence_length(self.config)
            check_run_config(self.config)
            resolve_last(self.config)
        except (ConfigError, CheckpointError) as err:
            self.parser.error(str(err))
        # the run's folder, taken before anything is written (only once, under DDP by rank 0)
        self.claimed = claim_version(self.config) if rank_zero_only.rank == 0 else None

    def instantiate_classes(self) -> None:
        """Build model, datamodule and trainer; a resumed checkpoint must fit the model (else one short
        error, as ``tools/eval.py`` gives). A failure gives the claimed run folder back."""
        try:
            super().instantiate_classes()
            ckpt_path = self.config.get("ckpt_path")
            if ckpt_path:
                check_architecture(load_checkpoint(ckpt_path), self.model, ckpt_path)
        except CheckpointError as err:
            self.release_claim()
            print(f"error: {err}", file=sys.stderr)  # the summary alone: the usage says nothing about weights
            raise SystemExit(2) from err
        except BaseException:
            self.release_claim()
            raise

    def release_claim(self) -> None:
        """Remove the run folder :func:`claim_version` made, while nothing is in it."""
        if getattr(self, "claimed", None) is not None and self.claimed.is_dir() and not any(self.claimed.iterdir()):
            self.claimed.rmdir()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks += [ConfiguredOptimization(), SignalCheckpoint(resume_hint(self.raw_args))]
        return trainer


def link_sequence_length(config: Any) -> None:
    """``model.init_args.num_steps`` := ``data.init_args.num_steps`` where the data is configured with one
    (event frames: its sequences are that long), so the run's config, its checkpoint and its logger
    record the T it trains with. Not an instantiation link: the model's own value for static data stays
    in the printed and saved config."""
    steps, model = config.get("data.init_args.num_steps"), config.get("model.init_args")
    if isinstance(steps, int) and not isinstance(steps, bool) and model is not None and "num_steps" in model:
        model["num_steps"] = steps


def _ints_before_floats(parser: LightningArgumentParser) -> None:
    """Trainer arguments typed ``int | float`` (``limit_*_batches``, ``overfit_batches``) read an
    integer as an integer: ``limit_train_batches: 1`` is one batch, ``1.0`` the whole epoch. (``typing``
    caches unions by their set of types, so the Trainer's ``Optional[Union[int, float]]`` can come back
    as ``Union[float, int, None]``, which jsonargparse tries float first.)"""
    for action in parser._actions:
        args = set(getattr(getattr(action, "_typehint", None), "__args__", ()))
        if action.dest.startswith("trainer.") and args in ({int, float}, {int, float, type(None)}):
            action._typehint = int | float | None if type(None) in args else int | float


def resume_hint(args: Any) -> str:
    """The command line that resumes this run: the same arguments with ``--ckpt_path last``."""
    args = list(sys.argv[1:] if args is None else args)
    kept = [a for i, a in enumerate(args)
            if not a.startswith("--ckpt_path") and (i == 0 or args[i - 1] != "--ckpt_path")]
    return shlex.join(["python", "tools/train.py", *kept, "--ckpt_path", "last"])


def _recovery(trainer: Trainer, args: Any) -> str:
    """How to go on after a divergence: from the run's last checkpoint, if it wrote one."""
    last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback is not None else ""
    if not last or not Path(last).is_file():
        return ("No checkpoint was written before this: fix the settings (config or --key value) and start the "
                "run again, without --ckpt_path.")
    return (f"The last checkpoint, {last}, holds finite weights: fix the settings (config or --key value; a resumed "
            f"run takes the optimizer and schedule settings of its config) and resume with: {resume_hint(args)}")


def _remove_unstarted(run_dir: Path, existed: bool, trainer: Trainer) -> None:
    """A run that failed before its first update leaves no folder behind (one it created itself)."""
    if existed or trainer.global_step > 0 or not trainer.is_global_zero or not run_dir.is_dir():
        return
    if not any(run_dir.rglob("*.ckpt")):
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"run folder {run_dir} removed: the run stopped before its first update", file=sys.stderr)


def train(args: Any = None) -> SpikelocCLI:
    """Build the run from config + overrides, train it, print where everything went."""
    cli = SpikelocCLI(args)
    trainer = cli.trainer
    ckpt_path = cli.config.get("ckpt_path")
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    existed = run_dir.exists() and (cli.claimed is None or run_dir.resolve() != cli.claimed.resolve())
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except BaseException as err:
        if isinstance(err, NonFiniteError):
            err.args = (f"{err}\n{_recovery(trainer, cli.raw_args)}",)
        _remove_unstarted(run_dir, existed, trainer)
        raise
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)  # on every rank: a broadcast under DDP
    if trainer.is_global_zero:
        print(f"\nrun folder: {run_dir}")
        if trainer.checkpoint_callback is not None:
            print(f"last checkpoint: {trainer.checkpoint_callback.last_model_path}")
        for name, value in sorted(trainer.callback_metrics.items()):
            print(f"  {name}: {float(value):.4f}")
    return cli
