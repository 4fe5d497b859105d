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
from lightning_app.errors import ConfigError, bad_value
from lightning_app.experiment import experiment_name
from lightning_app.persistence.kaggle_store import check_dataset
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.publisher import BackgroundPublisher, Published, PublishJob
from lightning_app.persistence.staging import stage_version
from lightning_app.persistence.store_protocol import CheckpointStore, StoreError
from lightning_app.persistence.sync_state import SyncState

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
        self.dataset, self.enabled, self.upload_last = dataset, enabled, upload_last
        self.flush_timeout = parse_duration("--sync.flush_timeout", flush_timeout).total_seconds()
        self.directory, self.call_timeout, self.title = directory, call_timeout, title
        self.upload_best = upload_best
        self._published_files: set[str] = set()  # every checkpoint some published version holds
        self.required, self.delete_old_versions = required, delete_old_versions
        self.publisher: BackgroundPublisher | None = None
        self._saved: list[CheckpointEntry] = []  # this run's checkpoints, oldest first (rank 0)
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
        from lightning_app.persistence.kaggle_store import KaggleDatasetStore

        dataset = self.dataset
        if dataset is None:
            username = credentials.username or self._username_at_login(credentials.source)
            if not username:
                return None
            dataset = f"{username}/{experiment_name(settings, data_identity)}-checkpoints"

        self._store = KaggleDatasetStore(
            dataset, title=self.title, call_timeout=self.call_timeout, delete_old_versions=self.delete_old_versions
        )
        log.info(f"Checkpoints will be published to {self._store.description} (credentials: {credentials.source})")
        return self._store

    def _username_at_login(self, source: str) -> str | None:
        """Ask the client whose an access token is (it tells only at login); None, with one warning, if it cannot."""
        from lightning_app.persistence.kaggle_store import login_username
        from lightning_app.persistence.retry import retry_call

        try:  # a network blip at login must not turn syncing off for the session
            username = retry_call(lambda: login_username(self.call_timeout), attempts=3, base_delay=2.0)
        except StoreError as error:
            log.warning(f"Could not learn whose credentials {source} are ({error}): pass --sync.dataset OWNER/SLUG")
            return None
        if not username:
            log.warning(f"The credentials from {source} name no user: pass --sync.dataset OWNER/SLUG to sync")
        return username

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.publisher is not None:
            return
        settings = pl_module.settings() if hasattr(pl_module, "settings") else {}
        datamodule = trainer.datamodule
        identity = datamodule.identity() if hasattr(datamodule, "identity") else {}
        store = self.store(settings, identity)
        self._checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, KaggleModelCheckpoint)]
        if self.required:
            self._check_required(store)
        if store is None:
            return
        self.publisher = BackgroundPublisher(
            store,
            base_delay=self.retry_delay,
            max_delay=max(60.0, self.retry_delay),
            on_published=self._note_published,
        )
        for checkpoint in self._checkpoints:
            checkpoint.add_listener(self._on_checkpoint_saved)

    def _check_required(self, store: CheckpointStore | None) -> None:
        """``--sync.required true``: a cheap look at the credentials and the dataset, or one-line exit 2."""
        if store is None:
            why = "syncing is off (--sync.enabled false)" if self.enabled is False else "no usable Kaggle credentials"
            raise ConfigError(f"--sync.required true: {why}")
        check = getattr(store, "check_access", None)
        if check is None:
            return
        try:
            found = check()
        except StoreError as error:
            raise ConfigError(f"--sync.required true: {error}") from None
        log.info(f"Checkpoint sync checked: {found}")

    def _on_checkpoint_saved(self, saved: SavedCheckpoint) -> None:
        """Runs in the checkpoint writer thread, right after the file and manifest are complete."""
        if self.publisher is None:
            return
        self._saved.append(saved.entry)
        manifest = Manifest.load(saved.folder) or Manifest([saved.entry])
        run_id = saved.entry.run_id
        also = self._best_to_add(manifest, run_id)
        staged, _files = stage_version(
            saved.folder, manifest, self.upload_last, saved.folder / STAGING_DIR, run_id, also
        )
        notes = version_notes(saved.entry) + (f", with the best checkpoint {also[0]}" if also else "")
        self.publisher.submit(PublishJob(staged, notes, saved.entry))
        if (reason := self.state.unsafe) is not None:  # once per checkpoint, never per step
            log.warning(f"Checkpoints are NOT SAFE ({reason}): {saved.entry.file} is only in {saved.folder}")

    def _best_to_add(self, manifest: Manifest, run_id: str | None) -> list[str]:
        """This run's best checkpoint, when ``upload_best`` is on and no published version holds it yet."""
        if not self.upload_best:
            return []
        best = next((e for e in manifest.newest_first(run_id) if e.best), None)
        return [best.file] if best is not None and best.file not in self._published_files else []

    def _note_published(self, published: Published) -> None:
        self._published_files.update(f.name for f in published.version.files if f.name.endswith(".ckpt"))

    @property
    def state(self) -> SyncState:
        """Where the sync stands now (see `SyncState`): the progress bar, the warnings and the last lines."""
        publisher = self.publisher
        newest = self._saved[-1] if self._saved else None
        if newest is None and self._checkpoints and self._checkpoints[0].last_saved is not None:
            newest = self._checkpoints[0].last_saved.entry
        if publisher is None:
            return SyncState(None, newest=newest)
        store = publisher.store
        published, failed = publisher.last_published, publisher.failed
        names = [e.file for e in self._saved]
        after = names.index(published.entry.file) + 1 if published and published.entry.file in names else 0
        return SyncState(
            store.description,
            dataset=getattr(store, "dataset", store.description),
            newest=newest,
            published=published,
            processing=publisher.processing,
            uploading=publisher.pending,
            behind=len(names) - after,
            stopped=publisher.disabled,
            failed=failed[1] if failed and failed[0] == newest else None,
            error=publisher.last_error,
        )

    def status(self) -> str:
        """A few words for the progress bar: the last published version, what is pending, or NOT SAFE."""
        return self.state.bar_text

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
        """Wait for pending checkpoint writes, then for the newest checkpoint to be published."""
        if self.publisher is None:
            return True
        for checkpoint in self._checkpoints:
            checkpoint.wait_for_writes()
        return self.publisher.flush(self.flush_timeout if timeout is None else timeout)

    def _finish(self) -> None:
        """Flush, then say plainly whether the final checkpoint is published (the last lines of ``fit``)."""
        if self.publisher is not None:
            self.flush()
        state = self.state
        folder = self._checkpoints[0].last_saved.folder if self._checkpoints and self._checkpoints[0].last_saved else ""
        if (line := state.final_line(folder)) is not None:
            (log.warning if state.store is not None and not state.newest_published else log.info)(line)
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        self._checkpoints, self._saved = [], []

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish()
