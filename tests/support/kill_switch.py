"""Test-only callbacks that SIGKILL the training process at an exact point, as a dying Kaggle session would (and a
few that shape a session around them: one version per checkpoint, slower steps).

Added to a run with a second config file (see `kill_config`); production code has no hooks for them.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from lightning_app.persistence import snapshot
from lightning_app.persistence.manifest import CheckpointEntry


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterCheckpoint(Callback):
    """SIGKILL the process right after the checkpoint of ``global_step`` is complete (file and manifest)."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, KaggleModelCheckpoint):
                callback.add_listener(self._on_saved)

    def _on_saved(self, saved: SavedCheckpoint) -> None:
        if saved.entry.global_step >= self.global_step:
            _die()


class KillAfterPublished(Callback):
    """SIGKILL the process once the checkpoint of ``global_step`` is published by `KaggleDatasetSync`: at the start of
    the next batch, the training thread publishes what is saved (`KaggleDatasetSync.flush`), then dies. (Waiting in
    the checkpoint writer's thread instead would hold the writer that the training thread's flush waits for.)"""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step
        self._sync = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from callbacks.kaggle_sync import KaggleDatasetSync

        self._sync = next(cb for cb in trainer.callbacks if isinstance(cb, KaggleDatasetSync))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if trainer.global_step >= self.global_step:
            assert self._sync.flush(120), "the checkpoint was not published"
            _die()


class KillSessionAfterPublished(Callback):
    """SIGKILL the whole process group, as the end of a Kaggle session does (a sweep and all its trials), once a
    checkpoint at or after ``global_step`` and before the run's end is published: in the middle of a trial."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step
        self._sync = None
        self._saved: CheckpointEntry | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from callbacks.kaggle_sync import KaggleDatasetSync

        self._sync = next(cb for cb in trainer.callbacks if isinstance(cb, KaggleDatasetSync))
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, KaggleModelCheckpoint):
                callback.add_listener(self._on_saved)

    def _on_saved(self, saved: SavedCheckpoint) -> None:
        self._saved = saved.entry  # the writer's thread: noted only, never waited in

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        saved = self._saved
        if saved is not None and self.global_step <= saved.global_step < saved.total_steps:
            assert self._sync.flush(120), "the checkpoint was not published"
            os.killpg(os.getpgrp(), signal.SIGKILL)


class KillDuringCheckpointWrite(Callback):
    """SIGKILL the process half-way through writing the checkpoint of ``global_step``."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step != self.global_step:
            return
        real_save = torch.save

        def save(state, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)):  # not the file: e.g. DDP's all_gather_object pickling
                return real_save(state, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(state, buffer, *args, **kwargs)
            with open(f, "wb") as out:  # some bytes are on disk, the rest never will be
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            _die()

        snapshot.torch.save = save


class KillBeforeManifest(Callback):
    """SIGKILL once the checkpoint of ``global_step`` is renamed into place, before its manifest entry is written."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, KaggleModelCheckpoint):
                original = callback._writer._on_written

                def on_written(written, original=original):
                    if trainer.global_step >= self.global_step:
                        _die()
                    original(written)

                callback._writer._on_written = on_written


class KillDuringStaging(Callback):
    """SIGKILL while the version of the checkpoint of ``global_step`` is being staged for upload."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_app.persistence import folder

        real_link = folder.os.link  # the os module's own: this process dies before anything else links

        def link(source, target):
            real_link(source, target)
            if trainer.global_step >= self.global_step:
                _die()  # one file linked, the manifest of the staged version not written yet

        folder.os.link = link


class KillAtStep(Callback):
    """SIGKILL the process when training reaches ``global_step``, between checkpoints: the checkpoint before it
    is complete (the background writer is waited for, so a loaded machine cannot turn this into a kill during a
    write, which `KillDuringCheckpointWrite` tests)."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step >= self.global_step:
            trainer.checkpoint_callback.wait_for_writes()
            _die()


class PublishEachCheckpoint(Callback):
    """Train on only once every checkpoint written so far is published: one version per checkpoint, instead of a race
    between training (a tiny model's steps take milliseconds) and uploading (a second per version)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        from callbacks.kaggle_sync import KaggleDatasetSync

        for callback in trainer.callbacks:
            if isinstance(callback, KaggleDatasetSync):
                assert callback.flush(120), "a checkpoint was not published"


def kill_config(folder: Path, kind: str, global_step: int, publish_each: bool = False) -> Path:
    """A config file that adds one of the callbacks above to ``trainer.callbacks`` (and `PublishEachCheckpoint`)."""
    path = folder / f"kill_{kind}_{global_step}{'_each' if publish_each else ''}.yaml"
    callbacks = [{"class_path": f"tests.support.kill_switch.{kind}", "init_args": {"global_step": global_step}}]
    if publish_each:
        callbacks.append({"class_path": "tests.support.kill_switch.PublishEachCheckpoint"})
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


class SigtermAtLastBatch(Callback):
    """Send SIGTERM to this process as the last batch of the epoch that ends at ``global_step`` starts."""

    def __init__(self, global_step: int) -> None:
        self.global_step = global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches and trainer.global_step + 1 == self.global_step:
            os.kill(os.getpid(), signal.SIGTERM)


class SlowSteps(Callback):
    """Make each training step take ``seconds`` longer, as a bigger model's would: a tiny model trains in
    milliseconds, too fast for a session budget of seconds to end it part-way."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        time.sleep(self.seconds)
