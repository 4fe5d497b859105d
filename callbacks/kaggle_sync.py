"""KaggleDatasetSync: publish each new checkpoint as a version of a private Kaggle Dataset, in the background."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from lightning_app.durations import parse_duration
from lightning_app.errors import bad_value
from lightning_app.experiment import experiment_name
from lightning_app.persistence.kaggle_store import check_dataset
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.publisher import BackgroundPublisher, Published, PublishJob
from lightning_app.persistence.staging import stage_version
from lightning_app.persistence.store_protocol import CheckpointStore

log = logging.getLogger("lightning_app.sync")

STAGING_DIR = ".staging"


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
    published version.

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
        self.dataset, self.enabled, self.upload_last = dataset, enabled, upload_last
        self.flush_timeout = parse_duration("--sync.flush_timeout", flush_timeout).total_seconds()
        self.directory, self.call_timeout, self.title = directory, call_timeout, title
        self.upload_best = upload_best
        self._published_files: set[str] = set()  # every checkpoint some published version holds
        self.publisher: BackgroundPublisher | None = None
        self._checkpoints: list[KaggleModelCheckpoint] = []
        self._store_resolved = False
        self._store: CheckpointStore | None = None

    def store(self, settings: dict[str, object], data_identity: dict[str, object]) -> CheckpointStore | None:
        """The store this run publishes to (and ``--resume`` downloads from); None when syncing is off."""
        if self._store_resolved:
            return self._store
        self._store_resolved = True
        if self.directory:
            from lightning_app.persistence.directory_store import DirectoryStore

            self._store = DirectoryStore(Path(self.directory))
            return self._store
        if self.enabled is False:
            return None
        from lightning_app.persistence.credentials import find_credentials

        credentials = find_credentials()
        if credentials is None:
            advice = "set KAGGLE_USERNAME/KAGGLE_KEY (Kaggle Secrets in a notebook) or ~/.kaggle/kaggle.json"
            log.warning(f"No Kaggle credentials found: checkpoints stay local ({advice})")
            return None
        dataset = self.dataset
        if dataset is None:
            if not credentials.username:
                log.warning("Kaggle credentials carry no username: pass --sync.dataset OWNER/SLUG to sync")
                return None
            dataset = f"{credentials.username}/{experiment_name(settings, data_identity)}-checkpoints"
        from lightning_app.persistence.kaggle_store import KaggleDatasetStore

        self._store = KaggleDatasetStore(dataset, title=self.title, call_timeout=self.call_timeout)
        log.info(f"Checkpoints will be published to {self._store.description} (credentials: {credentials.source})")
        return self._store

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.publisher is not None:
            return
        settings = pl_module.settings() if hasattr(pl_module, "settings") else {}
        datamodule = trainer.datamodule
        identity = datamodule.identity() if hasattr(datamodule, "identity") else {}
        store = self.store(settings, identity)
        if store is None:
            return
        self.publisher = BackgroundPublisher(
            store,
            base_delay=self.retry_delay,
            max_delay=max(60.0, self.retry_delay),
            on_published=self._note_published,
        )
        self._checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, KaggleModelCheckpoint)]
        for checkpoint in self._checkpoints:
            checkpoint.add_listener(self._on_checkpoint_saved)

    def _on_checkpoint_saved(self, saved: SavedCheckpoint) -> None:
        """Runs in the checkpoint writer thread, right after the file and manifest are complete."""
        if self.publisher is None:
            return
        manifest = Manifest.load(saved.folder) or Manifest([saved.entry])
        run_id = saved.entry.run_id
        also = self._best_to_add(manifest, run_id)
        staged, _files = stage_version(
            saved.folder, manifest, self.upload_last, saved.folder / STAGING_DIR, run_id, also
        )
        notes = version_notes(saved.entry) + (f", with the best checkpoint {also[0]}" if also else "")
        self.publisher.submit(PublishJob(staged, notes, saved.entry))

    def _best_to_add(self, manifest: Manifest, run_id: str | None) -> list[str]:
        """This run's best checkpoint, when ``upload_best`` is on and no published version holds it yet."""
        if not self.upload_best:
            return []
        best = next((e for e in manifest.newest_first(run_id) if e.best), None)
        return [best.file] if best is not None and best.file not in self._published_files else []

    def _note_published(self, published: Published) -> None:
        self._published_files.update(f.name for f in published.version.files if f.name.endswith(".ckpt"))

    def status(self) -> str:
        """A few words for the progress bar: the last published version and what is pending."""
        if self.publisher is None:
            return ""
        if self.publisher.disabled:
            return "sync off"
        parts = []
        if (published := self.publisher.last_published) is not None:
            parts.append(f"v{published.version.number or '?'}@{published.entry.global_step}")
        if (pending := self.publisher.pending) is not None:
            parts.append(f"uploading step {pending.global_step}")
        if self.publisher.last_error:
            parts.append("retrying")
        return " ".join(parts)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for pending checkpoint writes, then for the newest checkpoint to be published."""
        if self.publisher is None:
            return True
        for checkpoint in self._checkpoints:
            checkpoint.wait_for_writes()
        return self.publisher.flush(self.flush_timeout if timeout is None else timeout)

    def _finish(self) -> None:
        if self.publisher is None:
            return
        published = self.flush()
        newest = self._checkpoints[0].last_saved if self._checkpoints else None
        where = self.publisher.store.description
        if published and self.publisher.last_published is not None:
            last = self.publisher.last_published
            log.info(f"The newest checkpoint, {last.entry.file}, is published in {where}")
        elif newest is not None and not published:
            timed_out = f"not done after {self.flush_timeout:.0f} s"
            reason = self.publisher.disabled or self.publisher.last_error or timed_out
            log.warning(
                f"The newest checkpoint, {newest.entry.file}, is NOT published to {where} ({reason}); "
                f"it is in {newest.folder}"
            )
        self.publisher.close()
        self.publisher = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish()
