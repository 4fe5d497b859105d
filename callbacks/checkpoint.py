"""KaggleModelCheckpoint: ``kaggle_epoch_<epoch>_<timestamp>.ckpt`` files, a manifest, and "file ready" events."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

from callbacks.entry_fields import new_entry, training_config
from callbacks.step_consensus import StepConsensus
from lightning_app.durations import parse_duration
from lightning_app.errors import bad_value
from lightning_app.persistence.checkpoint_io import SnapshotCheckpointIO
from lightning_app.persistence.folder import (
    RUN_STATE_KEY,
    CheckpointFolder,
    DiskFull,
    Room,
    disk_full_line,
    free_bytes,
    out_of_space,
    sha256_of,
)
from lightning_app.persistence.manifest import CheckpointEntry, training_differences
from lightning_app.persistence.snapshot import SnapshotWriter, WrittenFile

log = logging.getLogger("lightning_app.checkpoint")

#: The `StepConsensus` question of the time trigger (``train_time_interval``).
TIME_SAVE_DUE = "time_save_due"


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint file that is complete on disk, with its manifest entry already written.

    Attributes:
        path: the file.
        entry: its manifest entry.
        folder: the folder's owner (global rank 0's), to stage a version from without reading the disk again.
        run_entries: this run's checkpoints in the manifest now, newest first (``entry`` among them).
        seconds: how long the background write took.
    """

    path: Path
    entry: CheckpointEntry
    folder: CheckpointFolder
    run_entries: tuple[CheckpointEntry, ...] = ()
    seconds: float = 0.0


class KaggleModelCheckpoint(ModelCheckpoint):
    """Saves every epoch (and every N steps / every interval if asked), keeps the newest few, writes a manifest.

    Saves block training only for a copy of the state to host memory; the rest runs in one background thread
    (`lightning_app.persistence.snapshot`). What must act once a file exists (the sync) uses `add_listener`.

    Each run has an id, given when it starts fresh and kept in its checkpoints across resumes: retention, the
    manifest entries and publishing act on this run's checkpoints only, so another run's files in the same
    folder are never deleted, overwritten or published. A name the folder's manifest has ever held is never
    given to another checkpoint.

    Args:
        dirpath: folder for checkpoints and ``manifest.json`` (on Kaggle: /kaggle/working/checkpoints).
        keep_last: how many of the newest checkpoints to keep locally, by recency; older ones this callback
            wrote are deleted. None keeps all.
        every_n_epochs: save at the end of every N-th epoch.
        every_n_train_steps: also save mid-epoch every N optimizer steps.
        train_time_interval: also save mid-epoch when this much time passed since the last save (``00:30:00``);
            under DDP the ranks agree on it through `consensus`, a couple of seconds late at most.
        save_weights_only: save only the weights (such a checkpoint cannot resume training).
        verbose: log one line per saved checkpoint.
        monitor: a logged metric (``val_loss``): the checkpoint with its best value is kept besides the newest
            ``keep_last``, marked ``"best": true`` in the manifest, and is Lightning's ``best_model_path``
            (``validate --ckpt_path best``). It does not change when checkpoints are saved.
        mode: ``min`` or ``max``: which value of ``monitor`` is best.
    """

    def __init__(
        self,
        dirpath: str = "checkpoints",
        keep_last: int | None = 3,
        every_n_epochs: int = 1,
        every_n_train_steps: int | None = None,
        train_time_interval: str | None = None,
        save_weights_only: bool = False,
        verbose: bool = True,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise bad_value("--checkpoint.keep_last", keep_last, "an integer >= 1, or null to keep all")
        if every_n_epochs < 1:
            raise bad_value("--checkpoint.every_n_epochs", every_n_epochs, "an integer >= 1")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise bad_value("--checkpoint.every_n_train_steps", every_n_train_steps, "an integer >= 1, or null")
        # Lightning's own step/time triggers switch its epoch saves off; this class runs those triggers itself.
        super().__init__(
            dirpath=dirpath,
            monitor=None,
            save_top_k=-1,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=True,
            save_weights_only=save_weights_only,
            verbose=verbose,
            enable_version_counter=False,
            mode=mode,
        )
        self.monitor = monitor  # after Lightning's init: this class saves on its own schedule whatever it is
        self.keep_last = keep_last
        self.every_n_steps = every_n_train_steps
        self.time_interval: timedelta | None = parse_duration("--checkpoint.train_time_interval", train_time_interval)
        self.settings: dict[str, object] = {}
        self._listeners: list[Callable[[SavedCheckpoint], None]] = []
        self._writer = SnapshotWriter(self._file_written, self._write_failed, self._make_room)
        self._async = False
        self._being_written: dict[str, CheckpointEntry] = {}
        self._lock = threading.Lock()
        self._folder: CheckpointFolder | None = None  # global rank 0's: names, manifest, retention, cleanup
        self._last_save_time = time.monotonic()
        self._save_requested = False
        self._end_of_epoch = False
        self._written_at = 0.0  # the checkpoint being saved's `CheckpointEntry.written_at`, also kept in its state
        #: Decisions every rank takes at the same step; `SessionDeadline` asks its questions here too.
        self.consensus = StepConsensus()
        self.run_id = ""
        self.training: dict[str, object] = {}
        self.last_saved: SavedCheckpoint | None = None
        #: The last save that failed for lack of space (None once a later one succeeds): NOT SAFE (disk full).
        self.disk_full: DiskFull | None = None
        self._room: Room | None = None  # made for the save being retried
        self._publishing_needs: list[Callable[[], tuple[set[str], set[Path]]]] = []

    @property
    @override
    def state_key(self) -> str:
        # Fixed: Lightning's default includes the arguments; a flag changed between sessions would drop the state.
        return RUN_STATE_KEY

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "run_id": self.run_id,
            "training": self.training,
            "written_at": self._written_at,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # A checkpoint from before runs had ids continues the id-less history, as it did then.
        self.run_id = str(state_dict.get("run_id", ""))
        if differences := training_differences(state_dict.get("training", {}), self.training):
            log.info(f"Resuming with training settings that differ from the run's: {differences}")

    def add_listener(self, listener: Callable[[SavedCheckpoint], None]) -> None:
        """Call ``listener`` (in the writer thread, global rank 0 only) each time a checkpoint file is complete."""
        self._listeners.append(listener)

    def add_publishing_needs(self, needs: Callable[[], tuple[set[str], set[Path]]]) -> None:
        """Register what publishing still needs when the disk is full: ``needs()`` returns the checkpoints waiting to
        be published and the staged folders in use, which making room must leave alone."""
        self._publishing_needs.append(needs)

    def save_at_step_boundary(self, trainer: pl.Trainer) -> bool:
        """Save at this step boundary (every rank must call it at the same step): now mid-epoch (True), at the
        epoch's end on its last batch (False), whatever ``every_n_epochs`` says, since a step save there would
        restore an exhausted loader and the resumed run would skip the next epoch."""
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save_requested = True
            return False
        self.save_now(trainer)
        return True

    def wait_for_writes(self, timeout: float | None = None) -> bool:
        """Block until the checkpoint being written and its manifest entry are done; False on timeout."""
        return self._writer.wait(timeout)

    @property
    def last_blocked_seconds(self) -> float:
        """How long the last save held up training (the host copy, plus any wait for the previous write)."""
        return self._writer.last_blocked_seconds

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        settings = getattr(pl_module, "settings", None)
        self.settings = dict(settings()) if callable(settings) else {}
        self.training = training_config(trainer, pl_module)
        if self.time_interval is not None:
            self.consensus.ask(TIME_SAVE_DUE, self._time_save_due)
        folder = Path(self.dirpath)
        # A fresh id; a resumed run gets its own back from the checkpoint (`load_state_dict` runs after setup).
        self.run_id = trainer.strategy.broadcast(uuid.uuid4().hex[:12])
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self._folder = CheckpointFolder(folder)
            if stage == "fit" and (cleanup := self._folder.clean()).describe():
                log.info(f"{folder}: {cleanup.describe()}")
        # The default IO writes inline; swap in the snapshot writer. A user's own IO plugin is left alone.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SnapshotCheckpointIO(self._writer)
            self._async = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()
        if self._folder is not None:
            self._warn_if_little_room(pl_module)

    def _warn_if_little_room(self, pl_module: pl.LightningModule) -> None:
        """One warning before the first save when the folder's disk cannot hold the checkpoints kept (keep_last,
        plus the one being written; two at least when all are kept)."""
        size = 3 * sum(p.numel() * p.element_size() for p in pl_module.parameters())  # weights + AdamW moments
        count = (self.keep_last or 1) + 1
        free = free_bytes(self._folder.path)
        if free < count * size:
            log.warning(
                f"Only {free / 1e6:.1f} MB free in {self._folder.path}: {count} checkpoints of about "
                f"{size / 1e6:.1f} MB need {count * size / 1e6:.1f} MB (--checkpoint.keep_last {self.keep_last}); "
                "older checkpoints of this run will be removed to make room, and a save that still does not fit "
                "is NOT saved"
            )

    def _time_save_due(self) -> bool:
        return time.monotonic() - self._last_save_time >= self.time_interval.total_seconds()

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self._writer.before_optimizer_step()  # a GPU copy of the last save may still be reading the weights

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        answers = self.consensus.at_batch_end(trainer, batch_idx)  # every batch: the ranks count batches alike
        if self._should_skip_saving_checkpoint(trainer):
            return
        if answers.get(TIME_SAVE_DUE):
            self._save_requested = True  # at this step boundary, or the next one if mid-accumulation
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not last_batch:
            return  # mid-accumulation: the gradients so far are not in any checkpoint
        if self._save_requested or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self.save_at_step_boundary(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # the scheduled epoch save, if this epoch has one
        if self._save_requested:  # asked for on the last batch (a signal, the deadline, the step or time trigger)
            self.save_now(trainer, end_of_epoch=True)

    def save_now(self, trainer: pl.Trainer, end_of_epoch: bool = False) -> None:
        """Save a checkpoint of the current state (every rank must call it)."""
        self._save_requested = False
        if self._last_global_step_saved == trainer.global_step and trainer.global_step > 0:
            return
        filepath = trainer.strategy.broadcast(str(self._next_path(trainer)))
        self._end_of_epoch = end_of_epoch
        self._save_checkpoint(trainer, filepath)

    @override
    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        self.save_now(trainer, end_of_epoch=True)  # the epoch save; `monitor` only decides which one is kept

    def _is_better(self, value: float) -> bool:
        if self.best_model_score is None or not self.best_model_path:
            return True
        return value < float(self.best_model_score) if self.mode == "min" else value > float(self.best_model_score)

    @override
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        entry = new_entry(
            trainer,
            Path(filepath).name,
            end_of_epoch=self._end_of_epoch,
            run_id=self.run_id,
            training=self.training,
            settings=self.settings,
        )
        self._written_at = entry.written_at  # in the file too, for an entry rebuilt from it (`entry_from_file`)
        with self._lock:
            self._being_written[str(filepath)] = entry
        self._last_save_time = time.monotonic()
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and not self._async:  # a user's IO plugin wrote it inline
            path = Path(filepath)
            self._file_written(WrittenFile(path, path.stat().st_size, sha256_of(path), 0.0))

    def _next_path(self, trainer: pl.Trainer) -> Path:
        """Rank 0's choice of name (see `CheckpointFolder.next_name`); the caller broadcasts it."""
        if self._folder is None:
            return Path(self.dirpath) / "not-rank-0.ckpt"
        with self._lock:
            being_written = {Path(p).name for p in self._being_written}
            return self._folder.path / self._folder.next_name(trainer.current_epoch, being_written)

    def _make_room(self, path: Path, error: BaseException, needed: int) -> bool:
        """After a failed write (writer thread): when the disk is full, free space for one more try (True)."""
        if self._folder is None or not out_of_space(error, self._folder.path, needed):
            return False
        keep: set[str] = set()
        staged: set[Path] = set()
        for needs in self._publishing_needs:
            names, folders = needs()
            keep, staged = keep | names, staged | folders
        with self._lock:
            self._room = self._folder.make_room(self.run_id, needed, keep, staged)
        return self._room.freed > 0

    def _file_written(self, written: WrittenFile) -> None:
        with self._lock:
            entry = self._being_written.pop(str(written.path), None)
            room, self._room = self._room, None
        if entry is None:
            return  # a save that is not ours (e.g. a user's trainer.save_checkpoint)
        if room is not None:
            full = disk_full_line(written.path.parent, room.free_before, written.size)
            log.warning(f"{full}: removed {', '.join(room.removed) or 'staged uploads only'}, saved {entry.file}")
        self.disk_full = None
        entry = replace(entry, size=written.size, sha256=written.sha256)
        value = entry.metrics.get(self.monitor) if self.monitor else None
        with self._lock:
            if value is not None and self._is_better(value):
                entry = replace(entry, best=True)
                self.best_model_path, self.best_model_score = str(written.path), torch.tensor(value)
            self._folder.record(entry, self.keep_last)
            run_entries = tuple(self._folder.manifest.newest_first(entry.run_id))
        saved = SavedCheckpoint(written.path, entry, self._folder, run_entries, written.seconds)
        self.last_saved = saved
        if self.verbose:
            log.info(
                f"Saved {entry.file} (epoch {entry.epoch}, step {entry.global_step}, "
                f"{entry.size / 1e6:.1f} MB) in {written.seconds:.2f} s"
            )
        for listener in self._listeners:
            try:
                listener(saved)
            except Exception:  # noqa: BLE001 - a listener must never break checkpointing
                log.exception("checkpoint listener %r failed", listener)

    def _write_failed(self, path: Path, error: BaseException) -> None:
        with self._lock:
            entry = self._being_written.pop(str(path), None)
            self._room = None
        needed = self._writer.snapshot_bytes
        if entry is not None and out_of_space(error, path.parent, needed):
            self.disk_full = DiskFull(path.parent, free_bytes(path.parent), needed, path.name, entry.global_step)
            log.warning(f"{self.disk_full.describe()}: {path.name} NOT saved")
        else:
            log.warning(f"Checkpoint {path.name} could not be written ({error}); training continues")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._writer.wait()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._writer.wait()
