"""`CheckpointStore` on a private Kaggle Dataset: each publish is a new dataset version.

Every call runs in a child process (``child.py``) that is killed when its bound passes: ``call_timeout`` plus, for
uploads and downloads, ``bytes / transfer_rate_floor``. The ``kaggle`` client is never imported in this process. A
failed call becomes a `TransientError`, `AuthError`, `NotFoundError`, `RefusedError` or `StoreError`; messages never
hold the key.

One publish is normally one child: it creates the dataset if it is missing; otherwise, once the newest version is
ready, it adds a version unless that newest version already holds exactly these files (names and sizes). That check
makes `publish` safe to retry although CreateDatasetVersion is not idempotent (a reply lost after the server
committed, or a child killed mid-call). While the newest version is still processing the child answers ``busy`` and
this process polls again with growing pauses, for up to ``ready_timeout``.

A new version is not there at once: after an ok create the child polls (``settle_polls`` times) for it to appear
and finish processing. Still not settled: the publish returns it as ``processing`` (uploaded, nothing to retry) and
`confirm` asks again later. Processing failed (over the private storage quota?): `ProcessingFailedError`, never
retried for the same files. A settled version's file list is checked against what was staged.

`cancel` kills this store's running children (each with its whole process group) and ends the publishes in progress.

Example::

    store = KaggleDatasetStore("alice/lm-checkpoints")
    retry_call(lambda: store.publish(stage_folder, "epoch 3, val_loss 1.39"))
    listing = store.read_version(texts=("manifest.json",))
    store.fetch_file("kaggle_epoch_3_20261126-031500.ckpt", Path("checkpoints/.remote"), listing.number)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_app.errors import bad_value
from lightning_app.persistence.kaggle.calls import ChildCalls
from lightning_app.persistence.kaggle.credentials import redact_secrets
from lightning_app.persistence.kaggle.names import METADATA_NAME, check_dataset, local_files
from lightning_app.persistence.kaggle.outcomes import CallResult, FailureKind, Operation, PublishAnswer, PublishOutcome
from lightning_app.persistence.retry import next_poll
from lightning_app.persistence.store import (
    AuthError,
    CheckpointStore,
    NoSpaceError,
    NotFoundError,
    ProcessingFailedError,
    PublishedVersion,
    RefusedError,
    RemoteFile,
    StoreError,
    TransientError,
    VersionContents,
)

_ERRORS: dict[FailureKind, type[StoreError]] = {
    FailureKind.AUTH: AuthError,
    FailureKind.TRANSIENT: TransientError,
    FailureKind.NOT_FOUND: NotFoundError,
    FailureKind.REFUSED: RefusedError,
    FailureKind.DISK_FULL: NoSpaceError,
}


@dataclass(frozen=True)
class DownloadedFile:
    """One file of a version, downloaded.

    Attributes:
        path: where it is now (inside the folder asked for).
        size: its size in bytes.
        wrapped: whether it arrived wrapped as ``<name>.zip``.
        peak_bytes: the most extra disk the download held at once (the file; the zip plus the file if wrapped).
    """

    path: Path
    size: int
    wrapped: bool
    peak_bytes: int


class KaggleDatasetStore(CheckpointStore):
    """Checkpoint versions as versions of the private Kaggle Dataset ``owner/slug``.

    Args:
        dataset: ``owner/slug``; the slug is 6-50 letters, digits or hyphens.
        title: the dataset title on first publish (6-50 characters, unique among the owner's datasets); defaults
            to the slug itself.
        call_timeout: seconds allowed for any one operation, before transfer time.
        transfer_rate_floor: the slowest transfer (bytes/s) still considered alive; uploads and downloads get
            ``call_timeout + bytes / transfer_rate_floor`` seconds.
        ready_timeout: longest wait (seconds) for the previous version to finish processing before publishing.
        delete_old_versions: ask Kaggle to delete every older version with each new one (the dataset then holds
            one checkpoint's worth; while the new version processes it is the only copy).
    """

    #: First and longest pause between status polls while the previous version is processing.
    poll_interval = 1.0
    poll_max_interval = 15.0
    #: After a create: how many status polls, this far apart (s), before the version counts as processing.
    settle_polls = 5
    settle_pause = 1.0
    #: 403s on a new version of a dataset this store created (its first version still processing) taken as busy.
    first_version_403_tries = 3

    def __init__(
        self,
        dataset: str,
        *,
        title: str | None = None,
        call_timeout: float = 120.0,
        transfer_rate_floor: float = 1e6,
        ready_timeout: float = 600.0,
        delete_old_versions: bool = False,
    ) -> None:
        check_dataset("dataset", dataset)
        title = title if title is not None else dataset.split("/")[1]  # the slug: unique among the owner's
        if not 6 <= len(title) <= 50:
            raise bad_value("title", title, "6 to 50 characters")
        for name, value in (("call_timeout", call_timeout), ("transfer_rate_floor", transfer_rate_floor)):
            if not value > 0:
                raise bad_value(name, value, "a number > 0")
        if not ready_timeout >= 0:
            raise bad_value("ready_timeout", ready_timeout, "a number >= 0")
        self.dataset = dataset
        self.title = title
        self.call_timeout = float(call_timeout)
        self.transfer_rate_floor = float(transfer_rate_floor)
        self.ready_timeout = float(ready_timeout)
        self.delete_old_versions = bool(delete_old_versions)
        self.description = f"kaggle:{dataset}"
        self._calls = ChildCalls(self.description)
        self._created_here = False  # this store created the dataset: a 403 may be its first-version window
        self._processing: dict[str, Any] | None = None  # the version still processing: its number floor and files
        self._stored_bytes: int | None = None  # the dataset's size over its versions, once measured

    def __repr__(self) -> str:
        return f"KaggleDatasetStore({self.dataset!r})"

    @property
    def name(self) -> str:
        return self.dataset

    def cancel(self) -> None:
        """Kill the children running now (with their process groups) and end the publishes in progress."""
        self._calls.cancel()

    # -- CheckpointStore -----------------------------------------------------------------------------------

    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        """Publish the files directly in ``folder`` as the newest version (creating the private dataset).

        ``folder`` should be a fresh staging folder per checkpoint: the client's resumable-upload cache is keyed
        by path, size and mtime, and a retry of the same folder reuses the blobs it already uploaded.
        ``dataset-metadata.json`` in ``folder`` is written here and removed afterwards.
        """
        start = time.monotonic()
        folder = Path(folder)
        local = local_files(folder)
        total = sum(local.values())
        metadata = {"title": self.title, "id": self.dataset, "licenses": [{"name": "CC0-1.0"}]}
        (folder / METADATA_NAME).write_text(json.dumps(metadata, indent=2))
        args = {"ref": self.dataset, "folder": str(folder), "notes": notes, "files": local, **self._settle_args()}
        args.update(delete_old_versions=self.delete_old_versions, measure=self._stored_bytes is None)
        deadline = time.monotonic() + self.ready_timeout
        pause, refusals = self.poll_interval, 0
        try:
            while (answer := self._publish_once(args, total, start, refusals)).outcome is PublishOutcome.BUSY:
                refusals += answer.first_version_refusal
                if time.monotonic() + pause > deadline:
                    raise TransientError(
                        f"{self.description}: the newest version is still processing ({answer.status}) "
                        f"after {self.ready_timeout:g} s"
                    )
                if self._calls.wait(pause, since=start):
                    raise TransientError(f"{self.description}: publish cancelled")
                pause = next_poll(pause, self.poll_max_interval)
        finally:
            (folder / METADATA_NAME).unlink(missing_ok=True)
        self._created_here = self._created_here or answer.new_dataset
        sent = 0 if answer.outcome is PublishOutcome.EXISTING else total
        return self._settled(answer, local, sent, time.monotonic() - start)

    def confirm(self) -> PublishedVersion | None:
        """Ask again about the last publish that came back processing: the version once it is ready, None while it
        is still processing (or when none is); `ProcessingFailedError` when its processing failed."""
        if self._processing is None:
            return None
        start = time.monotonic()
        args = {"ref": self.dataset, **self._processing, **self._settle_args(polls=1)}
        answer = PublishAnswer.from_json(self._call(Operation.SETTLE, args))
        version = self._settled(answer, self._processing["files"], 0, time.monotonic() - start)
        return None if version.processing else version

    def check_access(self) -> str:
        """Log in and look at the dataset (no upload): a few words on what was found; `AuthError` or
        `RefusedError` (or another `StoreError`) naming what failed."""
        return self._call(Operation.CHECK, {"ref": self.dataset})["found"]

    @property
    def stored_bytes(self) -> int | None:
        """The dataset's size over the versions it keeps, as far as the client can tell (None: not known yet)."""
        return self._stored_bytes

    def list_files(self, version: int | None = None) -> list[RemoteFile]:
        """Files of ``version`` (default: the newest ready one): one listing call."""
        ref = self.dataset if version is None else f"{self.dataset}/{int(version)}"
        return list(_remote(self._call(Operation.LIST, {"ref": ref})["files"]))

    def read_version(self, version: int | None = None, texts: tuple[str, ...] = ()) -> VersionContents:
        """One child: the version's number (default: the newest processed one), its files and the small ``texts``."""
        with _scratch() as work:
            args = {"ref": self.dataset, "version": version, "texts": list(texts), "path": str(work)}
            result = self._call(Operation.READ_VERSION, args)
        return VersionContents(result["version"], _remote(result["files"]), dict(result["texts"]))

    def fetch_file(self, name: str, dest: Path, version: int, size: int | None = None) -> Path:
        """Download ``name`` of ``version`` into ``dest`` (unwrapped when it arrives zipped; on ``dest``'s disk);
        ``size``, when known, bounds the call and is checked."""
        return self.download(name, dest, version, size).path

    def download(self, name: str, dest: Path, version: int | None, size: int | None = None) -> DownloadedFile:
        """`fetch_file`, saying how it arrived (wrapped or not) and the most extra disk it held at once."""
        dest = Path(dest).absolute()
        args = {"ref": self.dataset, "version": version, "name": name, "path": str(dest), "size": size}
        result = self._call(Operation.DOWNLOAD_FILE, args, transfer_bytes=size or 0)
        downloaded = DownloadedFile(
            Path(result["path"]), int(result["bytes"]), bool(result["wrapped"]), int(result["peak"])
        )
        if size is not None and downloaded.size != size:
            downloaded.path.unlink(missing_ok=True)
            raise TransientError(f"{self.description}: {name} arrived with {downloaded.size} bytes, not {size}")
        return downloaded

    # -- internals -----------------------------------------------------------------------------------------

    def _settle_args(self, polls: int | None = None) -> dict[str, Any]:
        return {"polls": self.settle_polls if polls is None else polls, "pause": self.settle_pause}

    def _publish_once(self, args: dict[str, Any], total: int, start: float, refusals: int) -> PublishAnswer:
        first_window = self._created_here and refusals < self.first_version_403_tries
        bound = self.settle_polls * self.settle_pause
        args = {**args, "first_window": first_window}
        return PublishAnswer.from_json(self._call(Operation.PUBLISH, args, total, since=start, extra=bound))

    def _settled(self, answer: PublishAnswer, local: dict[str, int], sent: int, seconds: float) -> PublishedVersion:
        """A `PublishedVersion` from a created/existing/processing/failed answer (failed raises)."""
        if answer.outcome is PublishOutcome.FAILED:
            self._processing = None
            raise ProcessingFailedError(self._failure_message(answer, local))
        if answer.outcome is PublishOutcome.PROCESSING:
            self._processing = {"before": answer.before, "files": local}
            files = tuple(RemoteFile(name, size) for name, size in sorted(local.items()))
            return PublishedVersion(None, files, sent, seconds, processing=True, stored_bytes=self._stored_bytes)
        self._processing = None
        files = self._verify(answer.files, local, answer.version)
        if answer.stored_bytes is not None:
            self._stored_bytes = answer.stored_bytes
        elif self._stored_bytes is not None and answer.outcome is PublishOutcome.CREATED:
            self._stored_bytes += sum(f.size for f in files)
        if self.delete_old_versions:
            self._stored_bytes = sum(f.size for f in files)
        return PublishedVersion(answer.version, files, sent, seconds, stored_bytes=self._stored_bytes)

    def _failure_message(self, answer: PublishAnswer, local: dict[str, int]) -> str:
        held = answer.stored_bytes
        before = f"{held / 1e6:.1f} MB in {answer.stored_versions} versions" if held is not None else "?"
        return (
            f"{self.description}: Kaggle accepted the new version, then its processing failed "
            f"(status {answer.status!r}); the likely cause is the private storage quota: the dataset "
            f"holds about {before} before this one, which adds {sum(local.values()) / 1e6:.1f} MB "
            f"(delete old versions on kaggle.com, or use --sync.delete_old_versions true)"
        )

    def _verify(self, listed: tuple[tuple[str, int], ...], local: dict[str, int], version: int | None):
        """The new version must hold every file at its size (a failed blob upload must not pass unnoticed)."""
        remote = dict(listed)
        missing = sorted(name for name in local if name not in remote)
        wrong = sorted(name for name in local if name in remote and remote[name] != local[name])
        if missing or wrong:
            raise TransientError(
                f"{self.description}: version {version} is incomplete: missing {missing or 'none'}, "
                f"wrong size {wrong or 'none'}"
            )
        return _remote(listed)

    def _call(
        self,
        op: Operation,
        args: dict[str, Any],
        transfer_bytes: int = 0,
        since: float | None = None,
        extra: float = 0.0,
    ) -> dict[str, Any]:
        """Run one operation in a child process bounded in time; raise its classified error.

        ``since``: when the operation began; if `cancel` came after that, no child is started. ``extra``: seconds
        the child may spend waiting on purpose (polls after a create).
        """
        bound = self.call_timeout + transfer_bytes / self.transfer_rate_floor + extra
        return raise_failure(self._calls.run(op, args, bound, since), f"{self.description}: {op.value}")


def raise_failure(result: CallResult, what: str) -> dict[str, Any]:
    """``result.result``, or its failure raised as the matching `StoreError` (never holding a secret)."""
    if result.ok:
        return result.result
    message = redact_secrets(f"{what}: {result.message}")
    if result.kind is FailureKind.TRANSIENT:
        raise TransientError(message, result.retry_after)
    raise _ERRORS.get(result.kind, StoreError)(message)


def login_username(call_timeout: float = 120.0) -> str | None:
    """The user the credentials log in as (an access token names its user only at login, over the network).

    Raises `AuthError` when the credentials are refused, `TransientError` when the service cannot be reached.
    """
    result = ChildCalls("kaggle").run(Operation.WHOAMI, {}, call_timeout)
    return raise_failure(result, "kaggle: logging in")["username"]


def read_newest(items: dict[str, str], call_timeout: float = 120.0) -> dict[str, VersionContents | None]:
    """The newest version of each dataset of ``items`` (``{OWNER/SLUG: file name}``) with the text of that (small)
    file, in one child process: None for a dataset that does not exist or has no version yet."""
    for dataset in items:
        check_dataset("dataset", dataset)
    with _scratch() as work:
        args = {"items": [[ref, name] for ref, name in items.items()], "path": str(work)}
        result = raise_failure(ChildCalls("kaggle").run(Operation.READ_NEWEST, args, call_timeout), "kaggle: reading")
    return {
        ref: None if found is None else VersionContents(found["version"], _remote(found["files"]), dict(found["texts"]))
        for ref, found in result.items()
    }


def _remote(listed) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(str(name), int(size)) for name, size in sorted(listed))


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder for the small files a child reads (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="kaggle-read-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
