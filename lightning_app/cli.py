"""``python -m lightning_app fit|validate|test``: a LightningCLI with the project's option groups and ``--resume``.

Option groups: ``--model.*`` (LanguageModel), ``--data.*`` (SyntheticDataModule by default, or
``--data TextDataModule --data.path ...``), ``--trainer.*``, ``--checkpoint.*`` (KaggleModelCheckpoint),
``--restore.*`` (where ``--resume`` looks). The seed script's flags still work as aliases:
``--pe_type``, ``--model_size``, ``--epochs``, ``--batch_size``.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from callbacks.checkpoint import KaggleModelCheckpoint
from callbacks.deadline import SessionDeadline
from callbacks.kaggle_sync import KaggleDatasetSync
from callbacks.progress_bar import use_sync_progress_bar
from lightning_app.data.canonical import precision_on_resume
from lightning_app.errors import ConfigError
from lightning_app.logging_setup import add_logging_callbacks, default_loggers, name_loggers
from lightning_app.module import LanguageModel
from lightning_app.persistence import restore
from lightning_app.persistence.manifest import Manifest
from lightning_app.persistence.resume import resolve_resume
from lightning_app.precision import resolve_precision

log = logging.getLogger("lightning_app")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: The seed script's flags and the options they stand for.
SEED_ALIASES = {
    "--pe_type": "--model.pe_type",
    "--model_size": "--model.model_size",
    "--epochs": "--trainer.max_epochs",
    "--batch_size": "--data.batch_size",
}


def expand_aliases(argv: list[str]) -> list[str]:
    """``--epochs 10`` -> ``--trainer.max_epochs 10`` (also ``--epochs=10``); every other argument is kept."""
    expanded = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        expanded.append(SEED_ALIASES[flag] + eq + value if flag in SEED_ALIASES else arg)
    return expanded


def make_cli(args: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> TrainingCLI:
    """Parse ``args`` (default: ``sys.argv``) and run the command, with ``callbacks`` added to the trainer's."""
    return TrainingCLI(
        LanguageModel,
        pl.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
        args=args,
    )


class TrainingCLI(LightningCLI):
    """The project's LightningCLI. See the module docstring for the option groups."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(KaggleModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(KaggleDatasetSync, "sync")
        parser.add_lightning_class_args(SessionDeadline, "deadline")
        parser.add_class_arguments(restore.RestoreOptions, "restore")
        parser.add_argument(
            "--resume",
            nargs="?",
            const="auto",
            default=None,
            help="Continue from the newest good checkpoint (local folder, --restore.input_dir, the sync dataset), "
            "or from the checkpoint file given. Without it training starts fresh.",
        )
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.set_defaults(
            {
                "trainer.use_distributed_sampler": False,  # our sampler shards and resumes; Lightning's would not
                "trainer.logger": default_loggers(),
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        if config.trainer.precision is None:  # auto; a resumed run keeps its own (only --resume PATH, for now)
            config.trainer.precision = precision_on_resume(
                config.get("resume"), resolve_precision(config.trainer.accelerator)
            )

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # validate/test runs keep their own version_N log folders
            name_loggers(self.trainer, self.model, self.datamodule)
        add_logging_callbacks(self.trainer)
        use_sync_progress_bar(self.trainer)

    def fit(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        """`Trainer.fit`, after the restore hook has turned ``--resume`` into a local checkpoint path."""
        config = self.config_init[self.subcommand]
        seq_len = getattr(datamodule, "seq_len", None)
        if seq_len is not None:
            model.model.check_sequence_length(seq_len)  # before training, not at the first batch
        if ckpt_path is None:
            ckpt_path = self._resolve_resume(config.get("resume"), model, datamodule, config.restore)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def validate(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=self._best_path(ckpt_path), **kwargs)

    def test(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        self.trainer.test(model, datamodule=datamodule, ckpt_path=self._best_path(ckpt_path), **kwargs)

    def _best_path(self, ckpt_path: str | None) -> str | None:
        """``--ckpt_path best``: the checkpoint the manifest marks best (``--checkpoint.monitor``)."""
        if ckpt_path != "best":
            return ckpt_path
        folder = Path(self.trainer.checkpoint_callback.dirpath)
        best = (Manifest.load(folder) or Manifest()).best()
        if best is None:
            raise ConfigError(
                f"--ckpt_path: got 'best'; expected a checkpoint file, or 'best' with a checkpoint marked best in "
                f"{folder / 'manifest.json'} (train with --checkpoint.monitor val_loss)"
            )
        return str(folder / best.file)

    def _sync(self) -> KaggleDatasetSync | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, KaggleDatasetSync)), None)

    def _resolve_resume(
        self, resume: str | None, model: LanguageModel, datamodule, options: restore.RestoreOptions
    ) -> str | None:
        def store():
            sync = self._sync()
            identity = datamodule.identity() if hasattr(datamodule, "identity") else {}
            return sync.store(model.settings(), identity) if sync is not None else None

        folder = Path(self.trainer.checkpoint_callback.dirpath)
        return resolve_resume(resume, folder, options, model.settings(), store)


def with_default_config(argv: list[str]) -> list[str]:
    """``fit`` without ``--config`` uses ``configs/default.yaml`` (a default config file would also sit under
    every ``--config``, leaking its model settings into e.g. smoke.yaml)."""
    if argv[:1] == ["fit"] and not any(a == "--config" or a.startswith("--config=") for a in argv):
        default = CONFIG_DIR / "default.yaml"
        if default.is_file():
            return ["fit", "--config", str(default), *argv[1:]]
    return argv


_LITERAL_ERROR = re.compile(r'Parser key "([^"]+)":\s*Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)', re.S)


def one_line(error: BaseException) -> str | None:
    """The user-facing line for a mistake in the command line or config; None for a real bug."""
    cause: BaseException | None = error
    while cause is not None:  # jsonargparse wraps what a constructor raised
        if isinstance(cause, ConfigError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    if type(error).__name__ != "ArgumentError":
        return None
    text = str(error)
    if match := _LITERAL_ERROR.search(text):
        key, accepted, value = match.groups()
        choices = ", ".join(a.strip().strip("'\"") for a in accepted.split(","))
        return f"--{key}: got {value.strip()!r}; expected one of: {choices}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return re.sub(r'^Parser key "([^"]+)":', r"--\1:", " ".join(lines[:2]))


#: ``python -m lightning_app COMMAND``: LightningCLI's commands, then plain ones (a module with ``main(argv) -> int``).
TRAINER_COMMANDS = {
    "fit": "train; with --resume, continue the newest run from its newest good checkpoint",
    "validate": "validation loss and perplexity of a checkpoint (--ckpt_path)",
    "test": "test loss and perplexity of a checkpoint (--ckpt_path)",
}
COMMANDS = {
    "checkpoints": ("lightning_app.checkpoints_command", "list what `fit --resume` would see, and the one it takes"),
    "plot": ("lightning_app.plot", "draw the logged curves of runs, their sessions stitched"),
    "lengths": ("lightning_app.lengths", "perplexity at several sequence lengths: train short, test long"),
    "generate": ("lightning_app.generate_command", "sample text from a checkpoint"),
}


def usage() -> str:
    lines = ["usage: python -m lightning_app COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    helps = {**TRAINER_COMMANDS, **{name: text for name, (_module, text) in COMMANDS.items()}}
    lines += [f"  {name:<12} {text}" for name, text in helps.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] in COMMANDS:
        raise SystemExit(importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]))
    if argv[0] not in TRAINER_COMMANDS and not argv[0].startswith("-"):
        print(
            f"error: got command {argv[0]!r}; expected one of: {', '.join([*TRAINER_COMMANDS, *COMMANDS])}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    argv = with_default_config(expand_aliases(argv))
    # Lightning's `ddp` launcher re-runs this command from sys.argv: give it the expanded one (and give a
    # notebook kernel its own back afterwards).
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    try:
        make_cli()
    except Exception as error:
        message = one_line(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved_argv
