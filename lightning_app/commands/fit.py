"""``python -m lightning_app fit|validate|test``: a LightningCLI with the project's option groups and ``--resume``.

Option groups: ``--model.*`` (LanguageModel), ``--data.*`` (SyntheticDataModule by default, or
``--data TextDataModule --data.path ...``), ``--trainer.*``, ``--checkpoint.*`` (KaggleModelCheckpoint), ``--sync.*``
(KaggleDatasetSync), ``--deadline.*`` (SessionDeadline), ``--restore.*`` (where ``--resume`` looks). The seed
script's flags still work as aliases: ``--pe_type``, ``--model_size``, ``--epochs``, ``--batch_size``.

A ``fit`` is prepared before its Trainer exists: the run's name, its store (made once: the sync publishes to the
one ``--resume`` read), and the checkpoint ``--resume`` continues from, made local. Then the Trainer is built, one
start line says what runs where, and training begins.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger

from callbacks.checkpoint import KaggleModelCheckpoint
from callbacks.deadline import SessionDeadline
from callbacks.kaggle_sync import KaggleDatasetSync
from callbacks.progress_bar import use_sync_progress_bar
from lightning_app.data.canonical import fresh_layout, precision_on_resume, read_saved_layout, resumed_layout
from lightning_app.data.datamodule import TokenWindowDataModule
from lightning_app.errors import ConfigError
from lightning_app.experiment import check_run_name, experiment_name
from lightning_app.gpu import check_torch_supports_gpu
from lightning_app.logging_setup import add_logging_callbacks, default_loggers, name_loggers_after, quiet_third_parties
from lightning_app.module import LanguageModel
from lightning_app.persistence.folder import Candidate, read_manifest
from lightning_app.persistence.history import HISTORY_NAME, restore_history
from lightning_app.persistence.restore import RestoreOptions, resolve_resume
from lightning_app.persistence.sync_target import make_store
from lightning_app.precision import resolve_precision

log = logging.getLogger("lightning_app")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

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


def with_default_config(argv: list[str]) -> list[str]:
    """``fit`` without ``--config`` uses ``configs/default.yaml`` (a default config file would also sit under
    every ``--config``, leaking its model settings into e.g. smoke.yaml)."""
    if argv[:1] == ["fit"] and not any(a == "--config" or a.startswith("--config=") for a in argv):
        default = CONFIG_DIR / "default.yaml"
        if default.is_file():
            return ["fit", "--config", str(default), *argv[1:]]
    return argv


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

    #: ``fit``: the run's name (logs, default dataset) and the local checkpoint ``--resume`` resolved to.
    experiment: str = ""
    resume_path: str | None = None
    #: ``fit --resume``: the checkpoint resumed from (its ``history``: the metric history published with it).
    resumed: Candidate | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(KaggleModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(KaggleDatasetSync, "sync")
        parser.add_lightning_class_args(SessionDeadline, "deadline")
        parser.add_class_arguments(RestoreOptions, "restore")
        parser.add_argument(
            "--resume",
            nargs="?",
            const="auto",
            default=None,
            help="Continue from the newest good checkpoint (local folder, --restore.input_dir, the sync dataset), "
            "or from the checkpoint file given. Without it training starts fresh.",
        )
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="The run's name: its log folder (logs/lm/NAME/) and default dataset (<user>/NAME-checkpoints); "
            "lower-case letters, digits and '-'. Default: <pe_type>-<model_size>-<8 hex of the model and data>. "
            "A sweep names each trial this way.",
        )
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.set_defaults(
            {
                "trainer.use_distributed_sampler": False,  # our sampler shards and resumes; Lightning's would not
                "trainer.logger": default_loggers(),
            }
        )

    def instantiate_classes(self) -> None:
        """The model, the data and the callbacks; for ``fit`` the run is prepared (see the module docstring);
        then the Trainer, its precision resolved."""
        check_torch_supports_gpu(self._get(self.config, "trainer").accelerator)  # one line, before any DDP process
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        if self.subcommand == "fit":
            self._prepare_run()
        trainer = self._get(self.config_init, "trainer")
        if trainer.precision is None:  # auto; a resumed run keeps its own where this machine can run it
            trainer.precision = precision_on_resume(self.resume_path, resolve_precision(trainer.accelerator))
            self._get(self.config, "trainer").precision = trainer.precision  # into the saved config.yaml too
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _prepare_run(self) -> None:
        """Name the run, make its store once (lazily), and resolve ``--resume`` before any process is launched."""
        seq_len = getattr(self.datamodule, "seq_len", None)
        if seq_len is not None:
            self.model.model.check_sequence_length(seq_len)  # before training, not at the first batch
        identity = self.datamodule.identity() if hasattr(self.datamodule, "identity") else {}
        name = self._get(self.config_init, "name")
        self.experiment = check_run_name("--name", name) if name else experiment_name(self.model.settings(), identity)
        sync: KaggleDatasetSync = self._get(self.config_init, "sync")
        store = functools.cache(lambda: make_store(sync.store_options, self.experiment))
        sync.store_choice = store
        folder = Path(self._get(self.config_init, "checkpoint").dirpath)
        options: RestoreOptions = self._get(self.config_init, "restore")
        resume = self._get(self.config_init, "resume")
        on_resume = functools.partial(setattr, self, "resumed")
        self.resume_path = resolve_resume(resume, folder, options, self.model.settings(), store, on_resume)

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit":  # validate/test runs keep their own version_N log folders
            name_loggers_after(self.trainer, self.experiment)
            self._restore_history()
        add_logging_callbacks(self.trainer)
        use_sync_progress_bar(self.trainer)

    def _restore_history(self) -> None:
        """Resuming: the run's ``metrics.csv`` becomes its history up to the checkpoint's step (the one published
        with it, else this folder's), before the logger opens it; rows a killed session logged later are dropped.
        """
        if self.resumed is None or int(os.environ.get("LOCAL_RANK", "0")) or int(os.environ.get("NODE_RANK", "0")):
            return
        logger = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        if logger is not None:
            step = self.resumed.entry.global_step
            said = restore_history(Path(logger.log_dir) / HISTORY_NAME, step, self.resumed.history)
            if said:
                log.info(said[0].upper() + said[1:])

    def fit(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        """`Trainer.fit` from the checkpoint ``--resume`` resolved to (or ``--ckpt_path``), after the start line."""
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
            deadline = next((cb for cb in self.trainer.callbacks if isinstance(cb, SessionDeadline)), None)
            if deadline is not None and isinstance(self.trainer.accelerator, CUDAAccelerator):
                deadline.consider_gpu_quota()  # asked once, here, so that the start line can say it
            log.info(start_line(self.trainer, self.experiment, datamodule, self.resume_path))
        path = ckpt_path if ckpt_path is not None else self.resume_path
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=path, **kwargs)

    def validate(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=self._best_path(ckpt_path), **kwargs)

    def test(self, model: pl.LightningModule, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        self.trainer.test(model, datamodule=datamodule, ckpt_path=self._best_path(ckpt_path), **kwargs)

    def _best_path(self, ckpt_path: str | None) -> str | None:
        """``--ckpt_path best``: the checkpoint the manifest marks best (``--checkpoint.monitor``)."""
        if ckpt_path != "best":
            return ckpt_path
        folder = Path(self.trainer.checkpoint_callback.dirpath)
        best = manifest.best() if (manifest := read_manifest(folder)) is not None else None
        if best is None:
            raise ConfigError(
                f"--ckpt_path: got 'best'; expected a checkpoint file, or 'best' with a checkpoint marked best in "
                f"{folder / 'manifest.json'} (train with --checkpoint.monitor val_loss)"
            )
        return str(folder / best.file)


def start_line(trainer: pl.Trainer, experiment: str, datamodule, resume_path: str | None = None) -> str:
    """``Training rope-small-1a2b3c4d on 2 GPUs (ddp) in 16-mixed, global batch 64 (2 canonical ranks x 32 x 1
    accumulated) on 2 devices, seed 1234; Session budget: ...``. A mistake in the data-parallel layout (canonical
    ranks the devices do not divide) is raised here, as one line, before any process is launched."""
    if not isinstance(trainer.accelerator, CUDAAccelerator):
        devices = "cpu" if trainer.num_devices == 1 else f"{trainer.num_devices} cpu processes"
    else:
        devices = f"{trainer.num_devices} GPU{'s' if trainer.num_devices > 1 else ''}"
    if trainer.world_size > 1:
        devices += f" ({type(trainer.strategy).__name__.removesuffix('Strategy').lower() or 'ddp'})"
    parts = [f"Training {experiment} on {devices} in {trainer.precision}"]
    if isinstance(datamodule, TokenWindowDataModule):
        accumulate = trainer.accumulate_grad_batches
        if resume_path:
            saved = read_saved_layout(resume_path)
            layout = resumed_layout(saved, datamodule.batch_size, trainer.world_size, 0, accumulate)[0]
        else:
            layout = fresh_layout(datamodule.canonical_ranks, datamodule.batch_size, trainer.world_size, 0, accumulate)
        parts.append(layout.describe())
    if (seed := os.environ.get("PL_GLOBAL_SEED")) is not None:
        parts.append(f"seed {seed}")
    line = ", ".join(parts)
    deadline = next((cb for cb in trainer.callbacks if isinstance(cb, SessionDeadline)), None)
    budget = deadline.budget_line if deadline is not None else None
    return f"{line}; {budget}" if budget else line


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


@contextlib.contextmanager
def fit_command_line(argv: list[str]) -> Iterator[None]:
    """While a `TrainingCLI` runs: ``sys.argv`` is ``argv`` (Lightning's `ddp` launcher re-runs the command from
    it; a notebook kernel gets its own back afterwards), and a mistake in the command line or config is raised as
    one `ConfigError` (a real bug as itself)."""
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        yield
    except Exception as error:
        message = one_line(error)
        if message is None:
            raise
        raise ConfigError(message) from None
    finally:
        sys.argv = saved_argv


def run_trainer_command(argv: list[str]) -> None:
    """``fit``/``validate``/``test`` with ``argv`` (aliases expanded, the default config added); a mistake in the
    command line or config is raised as one `ConfigError`."""
    argv = with_default_config(expand_aliases(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_third_parties()
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    with fit_command_line(argv):
        make_cli()
