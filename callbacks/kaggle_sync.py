"""KaggleDatasetSync: publish each new checkpoint as a version of a private Kaggle Dataset, in the background."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from typing_extensions import override

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from lightning_app.durations import parse_duration
from lightning_app.errors import ConfigError, bad_value
from lightning_app.experiment import experiment_name
from lightning_app.persistence.history import HISTORY_NAME, read_history, rows_before
from lightning_app.persistence.kaggle.names import check_dataset
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import BackgroundPublisher, Published, PublishJob
from lightning_app.persistence.store import StoreError
from lightning_app.persistence.sync_state import SyncState
from lightning_app.persistence.sync_target import StoreChoice, StoreOptions, make_store

log = logging.getLogger("lightning_app.sync")


def version_notes(entry: CheckpointEntry) -> str:
    """``Checkpoint after epoch 3 (step 1200, val_loss 1.234)``, or ``Checkpoint in epoch 3 (step 1100)``."""
    where = f"after epoch {entry.epoch}" if entry.end_of_epoch else f"in epoch {entry.epoch}"
    details = [f"step {entry.global_step}"]
    if "val_loss" in entry.metrics:
        details.append(f"val_loss {entry.metrics['val_loss']:.3f}")
    return f"Checkpoint {where} ({', '.join(details)})"


class KaggleDatasetSync(Callback):
    """After every checkpoint file is complete, publish it (and the manifest) as a new Dataset version.

    Only global rank 0 publishes, from one background worker: training never waits for the network. A version
    holds exactly the newest ``upload_last`` checkpoints and ``manifest.json``, so its size stays flat; with
    ``upload_best`` it also holds the best checkpoint (``--checkpoint.monitor``) when that changed since the last
    published version. With the CLI's CSV logger, a version also holds the run's metric history up to its newest
    checkpoint (``metrics.csv``: the rows logged before its step, every session stitched; see
    `lightning_app.persistence.history`), so the curves survive the session with the checkpoints.

    A checkpoint is staged on the training thread once the rows before its step are logged: Lightning logs a step's
    row after the callbacks' ``on_train_batch_end``, where a step checkpoint is taken, so the version waits for the
    next batch's start (or the epoch's end, the end of training, a flush).

    Args:
        dataset: OWNER/SLUG of the dataset; default ``<kaggle username>/<experiment name>-checkpoints``, the
            experiment name derived from the model and data settings, so two experiments never share one.
        enabled: ``auto`` publishes when Kaggle credentials are found; ``true`` warns when they are not.
        upload_last: how many of the newest checkpoints each version holds.
        flush_timeout: at the end of ``fit`` (or on an error), how long to wait for the newest checkpoint to be
            published (``00:10:00``, ``90s``...).
        directory: publish versions into this folder instead of Kaggle (e.g. a mounted Google Drive on Colab).
        call_timeout: bound in seconds on each Kaggle call (uploads get more time in proportion to their size).
        retry_delay: first wait in seconds before retrying a failed publish; it doubles per attempt (with jitter)
            up to 60 s.
        title: dataset title on first creation (default: derived from the slug).
        upload_best: also publish the best checkpoint by ``--checkpoint.monitor`` in the first version after it
            changed (it is never uploaded twice while it stays the best).
        required: before the first training step, check that the credentials work and the dataset can be
            created or written (no upload); otherwise exit with status 2 and one line saying what failed.
        delete_old_versions: each new version deletes the older ones on Kaggle, so the dataset holds one
            version's worth. Risk: while the new version is still processing it is the only copy.
    """

    def __init__(
        self,
        dataset: str | None = None,
        enabled: bool | Literal["auto"] = "auto",
        upload_last: int = 1,
        flush_timeout: str = "00:10:00",
        directory: str | None = None,
        call_timeout: float = 120.0,
        retry_delay: float = 2.0,
        title: str | None = None,
        upload_best: bool = False,
        required: bool = False,
        delete_old_versions: bool = False,
    ) -> None:
        if dataset is not None:
            check_dataset("--sync.dataset", dataset)
        if upload_last < 1:
            raise bad_value("--sync.upload_last", upload_last, "an integer >= 1")
        if not call_timeout > 0:
            raise bad_value("--sync.call_timeout", call_timeout, "a number of seconds > 0")
        if not retry_delay > 0:
            raise bad_value("--sync.retry_delay", retry_delay, "a number of seconds > 0")
        self.retry_delay = retry_delay
        self.upload_last, self.upload_best, self.required = upload_last, upload_best, required
        self.flush_timeout = parse_duration("--sync.flush_timeout", flush_timeout).total_seconds()
        self.store_options = StoreOptions(dataset, enabled, directory, title, call_timeout, delete_old_versions)
        #: Makes the run's store once; the CLI shares its own (made for ``--resume``) so that a run logs in once.
        self.store_choice: Callable[[], StoreChoice] | None = None
        self._published_files: set[str] = set()  # every checkpoint some published version holds
        self.publisher: BackgroundPublisher | None = None
        self._saved: list[CheckpointEntry] = []  # this run's checkpoints, oldest first (rank 0)
        self._checkpoints: list[KaggleModelCheckpoint] = []
        self._history: CSVLogger | None = None  # the logger whose metrics.csv each version holds (rank 0)
        self._trainer: pl.Trainer | None = None
        self._waiting: list[SavedCheckpoint] = []  # written, waiting for the rows before their step to be logged
        self._lock = threading.Lock()

    @property
    def dataset(self) -> str | None:
        """``--sync.dataset`` as given (None: the default name)."""
        return self.store_options.dataset

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.publisher is not None:
            return
        if self.store_choice is None:  # a Trainer built without the CLI
            settings = pl_module.settings() if hasattr(pl_module, "settings") else {}
            datamodule = trainer.datamodule
            identity = datamodule.identity() if hasattr(datamodule, "identity") else {}
            experiment = experiment_name(settings, identity)
            self.store_choice = functools.cache(lambda: make_store(self.store_options, experiment))
        choice = self.store_choice()
        store = choice.store
        self._checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, KaggleModelCheckpoint)]
        self._trainer = trainer
        self._history = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if self.required:
            self._check_required(choice)
        if store is None:
            if choice.error is None:  # a failed login was said already, in make_store
                said = log.info if self.store_options.enabled is False else log.warning
                said(f"{choice.why_none[:1].upper()}{choice.why_none[1:]}: checkpoints stay local")
            return
        self.publisher = BackgroundPublisher(
            store,
            base_delay=self.retry_delay,
            max_delay=max(60.0, self.retry_delay),
            on_published=self._note_published,
        )
        for checkpoint in self._checkpoints:
            checkpoint.add_listener(self._on_checkpoint_saved)
            checkpoint.add_publishing_needs(self.publisher.unpublished)

    def _check_required(self, choice: StoreChoice) -> None:
        """``--sync.required true``: a cheap look at the credentials and the dataset, or one-line exit 2."""
        if choice.store is None:
            raise ConfigError(f"--sync.required true: {choice.why_none}")
        try:
            found = choice.store.check_access()
        except StoreError as error:
            raise ConfigError(f"--sync.required true: {error}") from None
        log.info(f"Checkpoint sync checked: {found}")

    def _on_checkpoint_saved(self, saved: SavedCheckpoint) -> None:
        """Runs in the checkpoint writer thread, right after the file and manifest are complete: staged now, or,
        with a metric history to add, by the training thread once the rows before its step are logged."""
        if self.publisher is None:
            return
        with self._lock:
            self._saved.append(saved.entry)
            if self._history is not None:
                self._waiting.append(saved)
                return
        self._stage(saved)

    def _rows_logged_before(self, step: int | None) -> None:
        """Training thread: every row before ``step`` is logged (None: stage whatever waits); stage the newest
        checkpoint that waited for it (an older one would only be replaced in the publisher's queue)."""
        if not self._waiting:  # every batch: no lock when nothing waits (one that lands now is staged next batch)
            return
        with self._lock:
            ready = [s for s in self._waiting if step is None or s.entry.global_step <= step]
            self._waiting = [s for s in self._waiting if s not in ready]
        if ready and self.publisher is not None:
            for skipped in ready[:-1]:
                log.debug(f"{skipped.entry.file} is not published on its own: a newer checkpoint came before it")
            self._stage(ready[-1])

    def _stage(self, saved: SavedCheckpoint) -> None:
        newest = list(saved.run_entries[: self.upload_last]) or [saved.entry]
        best = self._best_to_add(saved.run_entries)
        staged = saved.folder.stage(newest + [e for e in best if e not in newest])
        self._add_history(staged, saved.entry.global_step)
        notes = version_notes(saved.entry) + (f", with the best checkpoint {best[0].file}" if best else "")
        self.publisher.submit(PublishJob(staged, notes, saved.entry))
        if (reason := self.state.unsafe) is not None:  # once per checkpoint, never per step
            log.warning(f"Checkpoints are NOT SAFE ({reason}): {saved.entry.file} is only in {saved.folder.path}")

    def _add_history(self, staged: Path, step: int) -> None:
        """Write the rows logged before ``step`` into the staged version as ``metrics.csv`` (training thread: the
        logger writes what it buffered first, and nothing appends meanwhile)."""
        if self._history is None:
            return
        try:
            self._history.save()
            text = read_history(Path(self._history.log_dir) / HISTORY_NAME)
            history = rows_before(text, step) if text else ""
            if history:
                (staged / HISTORY_NAME).write_text(history)
        except OSError as error:  # the checkpoint is what matters: publish it without its curves
            log.warning(f"The metric history could not be added to the version of step {step} ({error})")

    def _best_to_add(self, run_entries: tuple[CheckpointEntry, ...]) -> list[CheckpointEntry]:
        """This run's best checkpoint, when ``upload_best`` is on and neither a published version nor the publish
        in flight holds it (a queued job that holds it is about to be replaced by this one)."""
        if not self.upload_best:
            return []
        best = next((e for e in run_entries if e.best), None)
        sent = self._published_files | self.publisher.in_flight_files()
        return [best] if best is not None and best.file not in sent else []

    def _note_published(self, published: Published) -> None:
        self._published_files.update(f.name for f in published.version.files if f.name.endswith(".ckpt"))

    @property
    def state(self) -> SyncState:
        """Where the sync stands now (see `SyncState`): the progress bar, the warnings and the last lines."""
        publisher = self.publisher
        newest = self._saved[-1] if self._saved else None
        if newest is None and self._checkpoints and self._checkpoints[0].last_saved is not None:
            newest = self._checkpoints[0].last_saved.entry
        disk_full = self._checkpoints[0].disk_full if self._checkpoints else None
        if publisher is None:
            return SyncState(None, newest=newest, disk_full=disk_full)
        store = publisher.store
        published, failed = publisher.last_published, publisher.failed
        names = [e.file for e in self._saved]
        after = names.index(published.entry.file) + 1 if published and published.entry.file in names else 0
        return SyncState(
            store.description,
            dataset=store.name,
            newest=newest,
            published=published,
            processing=publisher.processing,
            uploading=publisher.uploading,
            behind=len(names) - after,
            stopped=publisher.disabled,
            failed=failed[1] if failed and failed[0] == newest else None,
            error=publisher.last_error,
            disk_full=disk_full,
        )

    @property
    def publishing(self) -> bool:
        """Whether this process publishes checkpoints (global rank 0, with a store, during ``fit``)."""
        return self.publisher is not None

    def publish_seconds(self, assumed: float) -> float:
        """How long publishing one checkpoint takes: the last version's measured time, ``assumed`` before the
        first, 0 when nothing is published."""
        if self.publisher is None:
            return 0.0
        published = self.publisher.last_published
        return published.version.seconds if published is not None else assumed

    def limit_flush(self, seconds: float) -> None:
        """Wait at most ``seconds`` in the flush at the end of ``fit`` (the deadline's share of what is left)."""
        self.flush_timeout = min(self.flush_timeout, seconds)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the checkpoints being written, then for the newest one to be published.

        Called on the training thread between steps (the end of ``fit``, the deadline's stop): the rows before
        the current step are logged, so what waits for them is staged first.
        """
        if self.publisher is None:
            return True
        step = self._trainer.global_step if self._trainer is not None else None
        self._rows_logged_before(step)  # first what is written already: a listener may wait for its publication
        for checkpoint in self._checkpoints:
            checkpoint.wait_for_writes()
        self._rows_logged_before(step)
        return self.publisher.flush(self.flush_timeout if timeout is None else timeout)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._rows_logged_before(trainer.global_step)  # the previous step's row is logged by now

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows_logged_before(trainer.global_step)  # before the epoch's checkpoint (checkpoint callbacks run last)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows_logged_before(trainer.global_step)

    def _finish(self) -> None:
        """Flush, then say plainly whether the final checkpoint is published (the last lines of ``fit``)."""
        if self.publisher is not None:
            self.flush()
        state = self.state
        last = self._checkpoints[0].last_saved if self._checkpoints else None
        folder = last.folder.path if last is not None else ""
        if (line := state.final_line(folder)) is not None:
            unsafe = state.unsafe is not None or (state.store is not None and not state.newest_published)
            (log.warning if unsafe else log.info)(line)
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        self._checkpoints, self._saved, self._waiting = [], [], []
        self._history = self._trainer = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish()
