"""Where the checkpoint sync stands: what the progress bar shows, when training is NOT SAFE, and the last lines.

A run is *not safe* while its newest state would be lost with the session: the disk is full and the last
checkpoint could not be written (with or without syncing), publishing has stopped (credentials or the dataset
refused), or more than `MAX_BEHIND` checkpoints in a row have been saved since the newest published one (the
newest has gone unpublished for longer than two checkpoint intervals). Counting
checkpoints, not seconds, keeps the rule the same for a run that saves every minute and one that saves hourly.

Example::

    state = sync.state                 # KaggleDatasetSync.state
    if state.unsafe:
        print(f"sync={state.bar_text}")  # sync=NOT SAFE (credentials refused)
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_app.persistence.folder import DiskFull
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import Published

#: Checkpoints saved since the newest published one before the run counts as not safe: the oldest of them has
#: then waited for two more checkpoint intervals.
MAX_BEHIND = 2


@dataclass(frozen=True)
class SyncState:
    """A snapshot of the sync, safe to read from any thread.

    Attributes:
        store: where versions go (``kaggle:owner/slug``), None when syncing is off.
        dataset: the Kaggle ``owner/slug`` (or the store's description), for messages.
        newest: the newest checkpoint saved in this run.
        published: the newest checkpoint whose version is confirmed.
        processing: uploaded, the store still processing it.
        uploading: waiting or in flight.
        behind: checkpoints saved since ``published``.
        stopped: why publishing stopped for good (refused), if it did.
        failed: the last processing failure after upload, if any.
        error: the last failure that is being retried.
        disk_full: the last save that failed for lack of space (None once a later save succeeds).
    """

    store: str | None
    dataset: str | None = None
    newest: CheckpointEntry | None = None
    published: Published | None = None
    processing: Published | None = None
    uploading: CheckpointEntry | None = None
    behind: int = 0
    stopped: str | None = None
    failed: str | None = None
    error: str | None = None
    disk_full: DiskFull | None = None

    @property
    def newest_published(self) -> bool:
        return self.newest is not None and self.published is not None and self.published.entry == self.newest

    @property
    def unsafe(self) -> str | None:
        """Why the newest checkpoints are not safe (a few words), or None."""
        if self.disk_full is not None:
            return "disk full"
        if self.store is None:
            return None
        if self.stopped:
            return "credentials refused" if self.stopped.startswith("credentials refused") else "publishing refused"
        if self.behind > MAX_BEHIND:
            return f"{self.behind} checkpoints unpublished"
        return None

    @property
    def bar_text(self) -> str:
        """``v4@96 uploading step 128``, ``NOT SAFE (credentials refused)``, or "" when syncing is off."""
        if self.store is None and self.disk_full is None:
            return ""
        if (reason := self.unsafe) is not None:
            return f"NOT SAFE ({reason})"
        parts = []
        if self.published is not None:
            parts.append(f"v{self.published.version.number or '?'}@{self.published.entry.global_step}")
        if self.processing is not None:
            parts.append(f"processing step {self.processing.entry.global_step}")
        if self.uploading is not None:
            parts.append(f"uploading step {self.uploading.global_step}")
        if self.error:
            parts.append("retrying")
        return " ".join(parts)

    def final_line(self, folder: object) -> str | None:
        """The last line of ``fit``: whether the final checkpoint is published, and where it is otherwise."""
        if (full := self.disk_full) is not None:
            since = f"step {self.newest.global_step} ({self.newest.file})" if self.newest else "the start"
            lost = f"work since {since} would be lost"
            return f"Final training state (step {full.step}) NOT saved: {full.describe()}; {lost}"
        if self.newest is None:
            return None
        name = self.newest.file
        if self.newest_published:
            number = self.published.version.number
            version = f"version {number}" if number is not None else "the newest version"
            return f"Final checkpoint {name} published as {version} of {self.dataset}"
        if self.store is None:
            reason = "syncing is off"
        elif self.processing is not None and self.processing.entry == self.newest:
            reason = f"uploaded to {self.dataset}, but Kaggle had not finished processing it"
        else:
            reason = self.stopped or self.failed or self.error or "the upload did not finish in time"
        return f"Final checkpoint {name} NOT published: {reason}; it is only in {folder}"
