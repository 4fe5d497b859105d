"""What ``fit`` logs by default: one CSV file per experiment that continues across resumes, TensorBoard when it is
installed, the learning rate (`LearningRateMonitor`), and the training wall time (`callbacks.wall_clock`).

Layout (``save_dir`` is ``logs``)::

    logs/lm/<experiment>/metrics.csv           one file per experiment, appended to by every resumed session
    logs/lm/<experiment>/hparams.yaml          the model's hyperparameters (pe_type, model_size...)
    logs/lm/<experiment>/config.yaml           the CLI's resolved config
    logs/tensorboard/<experiment>/events.*     only when ``tensorboard`` is importable

``<experiment>`` is `lightning_app.experiment.experiment_name` (``rope-small-1a2b3c4d``): the same name the sync
dataset is derived from, so a resumed run finds its own log folder. Across Kaggle sessions the working directory
is gone; ``python -m lightning_app plot`` stitches the metrics files of several sessions into one curve.

Nothing here draws random numbers or syncs with the device per step: the exact-resume guarantees hold.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import warnings
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.callbacks import Callback, Checkpoint, LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from typing_extensions import override

from callbacks.wall_clock import WallClock
from lightning_app.experiment import experiment_name


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    @override
    def _check_log_dir_exists(self) -> None:
        # Lightning warns and deletes metrics.csv here. Keep it, and start from its header, so that rows appended
        # by this session line up with the columns already in the file.
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            self.metrics_keys = list(next(csv.reader(file), []))


class _NamedAfterExperiment:
    """``name_after`` for a Lightning logger that keeps its folder name in ``_version`` and opens ``_experiment``."""

    _version: int | str | None
    _experiment: Any

    def name_after(self, experiment: str) -> None:
        """Use ``experiment`` as the version folder, unless a version was given or the folder is already open."""
        if self._version is None and self._experiment is None:
            self._version = experiment


class ResumableCSVLogger(_NamedAfterExperiment, CSVLogger):
    """A `CSVLogger` whose ``metrics.csv`` continues across resumed sessions in the same working directory.

    Left without a ``version``, the CLI names the folder after the experiment (`name_loggers`), so every session
    of one run appends to one file; rows for steps a resumed session repeats are appended again (readers such as
    ``plot`` let the later row win).

    Args:
        save_dir: root folder of the logs.
        name: sub-folder for this logger.
        version: the run's folder name; None: the experiment name (or ``version_<N>`` outside the CLI).
        prefix: prepended to every metric key.
        flush_logs_every_n_steps: write buffered rows at least this often (Lightning also writes at each log step).
    """

    def __init__(
        self,
        save_dir: str = "logs",
        name: str = "lm",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ResumableTensorBoardLogger(_NamedAfterExperiment, TensorBoardLogger):
    """A `TensorBoardLogger` named after the experiment, so resumed sessions add event files to one run folder.

    Args:
        save_dir: root folder of the logs.
        name: sub-folder for this logger.
        version: the run's folder name; None: the experiment name (or ``version_<N>`` outside the CLI).
        default_hp_metric: log Lightning's placeholder ``hp_metric`` (off: it is always -1 here).
    """

    def __init__(
        self,
        save_dir: str = "logs",
        name: str = "tensorboard",
        version: int | str | None = None,
        default_hp_metric: bool = False,
    ) -> None:
        super().__init__(save_dir, name, version, default_hp_metric=default_hp_metric)


def tensorboard_available() -> bool:
    """True when Lightning's `TensorBoardLogger` can write (``tensorboard`` or ``tensorboardX`` importable)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def default_loggers(save_dir: str = "logs") -> list[dict[str, Any]]:
    """The ``trainer.logger`` default for the CLI: CSV always, TensorBoard too when it is installed."""
    loggers = [{"class_path": f"{__name__}.ResumableCSVLogger", "init_args": {"save_dir": save_dir, "name": "lm"}}]
    if tensorboard_available():
        init = {"save_dir": save_dir, "name": "tensorboard"}
        loggers.append({"class_path": f"{__name__}.ResumableTensorBoardLogger", "init_args": init})
    return loggers


def name_loggers(trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any = None) -> str | None:
    """Name the trainer's resumable loggers after the experiment of ``model`` and ``datamodule``; returns the name
    (None when ``model`` has no ``settings()``). See `name_loggers_after`."""
    settings = getattr(model, "settings", None)
    if not callable(settings):
        return None
    identity = datamodule.identity() if hasattr(datamodule, "identity") else {}
    name = experiment_name(settings(), identity)
    name_loggers_after(trainer, name)
    return name


def name_loggers_after(trainer: pl.Trainer, name: str) -> None:
    """Name the trainer's resumable loggers' folders ``name`` (``rope-small-1a2b3c4d``).

    Must run before the loggers open their folders (``Trainer.fit`` opens them before any ``setup`` hook): the
    CLI calls it right after instantiating the classes. Every DDP rank computes the same name.
    """
    for logger in trainer.loggers:
        if isinstance(logger, (ResumableCSVLogger, ResumableTensorBoardLogger)):
            logger.name_after(name)


#: Lines Lightning logs at the start of ``fit`` that the project's start line says instead (devices, seed), or
#: that advertise (its tips).
_FOLDED_INTO_START_LINE = ("GPU available:", "TPU available:", "Seed set to", "💡 Tip:")


class _DropFolded(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_FOLDED_INTO_START_LINE)


def quiet_third_parties() -> None:
    """The first lines of ``fit`` are the project's: Lightning's tips and device lines, and the deprecation
    warnings torch and Lightning raise about each other's internals, are dropped (only those)."""
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning_fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFolded) for f in logger.filters):
            logger.addFilter(_DropFolded())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)


def add_logging_callbacks(trainer: pl.Trainer) -> None:
    """Add the learning-rate monitor (per step, only with a logger) and the `WallClock`, unless already there.

    Inserted before the checkpoint callbacks, where Lightning keeps every other callback.
    """
    wanted: list[Callback] = []
    if trainer.loggers and not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks):
        wanted.append(LearningRateMonitor(logging_interval="step"))
    if not any(isinstance(cb, WallClock) for cb in trainer.callbacks):
        wanted.append(WallClock())
    first_checkpoint = next((i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, Checkpoint)), None)
    at = len(trainer.callbacks) if first_checkpoint is None else first_checkpoint
    trainer.callbacks[at:at] = wanted
