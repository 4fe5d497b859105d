"""One background worker that publishes staged folders to a store: latest wins, retried, never blocking.

At most one publish is in flight; a newer job replaces one still waiting. Failures are retried with backoff
(`retry.retry_call`) and reported; a refused credential or a refused dataset name stops publishing with one
warning. A version the store accepted but is still processing (``PublishedVersion.processing``) is not retried:
while nothing newer waits, the worker asks the store's `confirm` again with growing pauses. A version whose
processing failed is reported once and never re-uploaded; the next checkpoint is published as usual. Nothing
here raises into the caller's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lightning_app.persistence.folder import CheckpointFolder
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.retry import next_poll, retry_call
from lightning_app.persistence.store import (
    AuthError,
    CheckpointStore,
    ProcessingFailedError,
    PublishedVersion,
    RefusedError,
    StoreError,
)

log = logging.getLogger("lightning_app.sync")


@dataclass(frozen=True)
class PublishJob:
    folder: Path
    notes: str
    entry: CheckpointEntry  # the newest checkpoint in the folder


@dataclass(frozen=True)
class Published:
    entry: CheckpointEntry
    version: PublishedVersion


def _names_in(job: PublishJob | None) -> set[str]:
    return {p.name for p in job.folder.iterdir()} if job is not None and job.folder.is_dir() else set()


class BackgroundPublisher:
    """Publishes `PublishJob`s through ``store`` in a daemon thread.

    Args:
        store: where versions go.
        attempts: tries per job before it is set aside (it is tried again when nothing newer arrives).
        base_delay: first backoff delay in seconds; doubles per attempt, with full jitter.
        max_delay: longest backoff delay.
        on_published: called in the worker thread after each successful publish.
        confirm_interval: first pause (s) before asking again about a version the store is still processing.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        attempts: int = 6,
        base_delay: float = 2.0,
        max_delay: float = 60.0,
        on_published: Callable[[Published], None] | None = None,
        confirm_interval: float = 5.0,
    ) -> None:
        self.store = store
        self._attempts, self._base_delay, self._max_delay = attempts, base_delay, max_delay
        self._on_published = on_published
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._queued: PublishJob | None = None
        self._in_flight: PublishJob | None = None
        self._newest: CheckpointEntry | None = None
        self._confirm_interval = confirm_interval
        self.last_published: Published | None = None
        #: Uploaded, but the store is still processing it (not confirmed yet).
        self.processing: Published | None = None
        #: The last checkpoint whose version failed processing, and why.
        self.failed: tuple[CheckpointEntry, str] | None = None
        self.last_error: str | None = None
        self.disabled: str | None = None
        self._thread = threading.Thread(target=self._run, name="kaggle-sync", daemon=True)
        self._thread.start()

    def submit(self, job: PublishJob) -> None:
        """Queue ``job``; a job still waiting is replaced (its staged folder discarded)."""
        with self._cond:
            if self.disabled or self._stop.is_set():
                CheckpointFolder.discard_staged(job.folder)
                return
            replaced, self._queued, self._newest = self._queued, job, job.entry
            self._cond.notify_all()
        if replaced is not None:
            CheckpointFolder.discard_staged(replaced.folder)

    def in_flight_files(self) -> set[str]:
        """The names of the files the publish in flight is uploading (none when nothing is in flight)."""
        with self._cond:
            job = self._in_flight
        return _names_in(job)

    def unpublished(self) -> tuple[set[str], set[Path]]:
        """The files waiting to be published (queued or in flight) and their staged folders."""
        with self._cond:
            jobs = [job for job in (self._queued, self._in_flight) if job is not None]
        return set().union(*(_names_in(job) for job in jobs)), {job.folder for job in jobs}

    @property
    def uploading(self) -> CheckpointEntry | None:
        """The newest checkpoint being uploaded (queued or in flight), if any."""
        with self._cond:
            job = self._queued or self._in_flight
            return job.entry if job else None

    def newest_is_published(self) -> bool:
        with self._cond:
            published = self.last_published.entry if self.last_published else None
            return self._newest is None or published == self._newest

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the newest submitted checkpoint to be published; True if it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queued or self._in_flight or self.processing) and not self.disabled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return self.newest_is_published()

    def close(self, timeout: float = 10.0) -> None:
        """Stop: a job still waiting is discarded, a call still running is killed (``store.cancel()``), and the
        worker is given up to ``timeout`` s to end; never blocks longer than that."""
        with self._cond:
            self._stop.set()
            waiting, self._queued = self._queued, None
            self._cond.notify_all()
        if waiting is not None:
            CheckpointFolder.discard_staged(waiting.folder)
        self.store.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = self._confirm_interval
        while True:
            with self._cond:
                if self._queued is None and not self._stop.is_set():
                    self._cond.wait(pause if self.processing is not None else None)
                if self._stop.is_set():
                    return
                job = self._queued
                if job is None and self.processing is None:
                    continue  # woken with nothing to do
                if job is not None:
                    self._queued, self._in_flight = None, job
            if job is None:  # nothing newer waits: ask again about the version still processing
                pause = self._confirm(pause)
                continue
            pause = self._confirm_interval
            failed = self._publish(job)
            with self._cond:
                self._in_flight = None
                retry_later = failed and self._queued is None and not self._stop.is_set()
                if retry_later:
                    self._queued = job  # nothing newer came: try this one again after a pause
                self._cond.notify_all()
            if retry_later:
                self._stop.wait(self._max_delay)
            else:
                CheckpointFolder.discard_staged(job.folder)

    def _confirm(self, pause: float) -> float:
        """One ``store.confirm()`` about ``self.processing``; returns the pause before the next one."""
        processing = self.processing
        if processing is None:
            return self._confirm_interval
        try:
            version = self.store.confirm()
        except ProcessingFailedError as error:
            self._processing_failed(processing.entry, error)
            return self._confirm_interval
        except StoreError as error:
            log.debug(f"Asking about {processing.entry.file} failed ({error}); asking again later")
            return next_poll(pause, self._max_delay)
        if version is None:
            return next_poll(pause, self._max_delay)
        log.info(f"Kaggle finished processing {processing.entry.file}: it is published as version {version.number}")
        upload = processing.version  # what the deadline's estimate needs is the upload, not this last question
        self._record(
            Published(processing.entry, replace(version, bytes_sent=upload.bytes_sent, seconds=upload.seconds))
        )
        return self._confirm_interval

    def _processing_failed(self, entry: CheckpointEntry, error: ProcessingFailedError) -> None:
        with self._cond:
            self.processing, self.failed, self.last_error = None, (entry, str(error)), str(error)
            self._cond.notify_all()
        log.warning(f"Publishing {entry.file} failed after upload: {error}. The next checkpoint is still published.")

    def _record(self, published: Published) -> None:
        with self._cond:
            if published.version.processing:
                self.processing = published
            else:
                self.last_published, self.processing = published, None
            self.last_error = None
            self._cond.notify_all()
        if not published.version.processing and self._on_published is not None:
            self._on_published(published)

    def _publish(self, job: PublishJob) -> bool:
        """Publish one job; True when it failed in a way worth trying again later."""
        try:
            version = retry_call(
                lambda: self.store.publish(job.folder, job.notes),
                attempts=self._attempts,
                base_delay=self._base_delay,
                max_delay=self._max_delay,
                stop=self._stop,
                on_retry=lambda attempt, delay, error: log.warning(
                    f"Publishing {job.entry.file} to {self.store.description} failed ({error}); "
                    f"retry {attempt} in {delay:.0f} s"
                ),
            )
        except (AuthError, RefusedError) as error:  # trying again cannot help: stop, with one warning
            with self._cond:  # a job queued meanwhile would only be refused again: it goes too
                self.disabled = f"credentials refused ({error})" if isinstance(error, AuthError) else str(error)
                dropped, self._queued = self._queued, None
            if dropped is not None:
                CheckpointFolder.discard_staged(dropped.folder)
            log.warning(f"Checkpoint sync stopped: {self.disabled}. Checkpoints stay local only.")
            return False
        except ProcessingFailedError as error:  # uploading the same files again would fail again
            self._processing_failed(job.entry, error)
            return False
        except StoreError as error:
            self.last_error = str(error)
            if not self._stop.is_set():
                log.warning(f"Could not publish {job.entry.file} to {self.store.description}: {error}")
            return not self._stop.is_set()
        except Exception as error:  # noqa: BLE001 - never let the worker die silently
            self.last_error = f"{type(error).__name__}: {error}"
            log.exception(f"Unexpected error publishing {job.entry.file}")
            return False
        number = f"version {version.number}" if version.number is not None else "a new version"
        stored = f"; the dataset holds {version.stored_bytes / 1e6:.1f} MB" if version.stored_bytes is not None else ""
        sent = f"{version.bytes_sent / 1e6:.1f} MB in {version.seconds:.1f} s{stored}"
        if version.processing:
            log.info(f"Uploaded {job.entry.file} to {self.store.description} ({sent}); Kaggle is still processing it")
        else:
            log.info(f"Published {job.entry.file} as {number} of {self.store.description} ({sent})")
        self._record(Published(job.entry, version))
        return False
