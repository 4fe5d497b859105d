"""``CheckpointStore`` on a private Kaggle Dataset: each publish is a new dataset version.

Every network operation runs in a child process (``kaggle_calls.py``) that is killed when its bound passes:
``call_timeout`` plus, for uploads and downloads, ``bytes / transfer_rate_floor``. The ``kaggle`` client is never
imported in this process. A killed or failed child becomes ``TransientError``, ``AuthError``, ``NotFoundError``
or ``StoreError``; messages never hold the key.

One publish is normally one child: it creates the dataset if it is missing; otherwise, once the newest version is
ready, it adds a version unless that newest version already holds exactly these files (names and sizes). That
check makes ``publish`` safe to retry although CreateDatasetVersion is not idempotent (a reply lost after the
server committed, or a child killed mid-call). While the newest version is still processing the child answers
"busy" and this process polls again with growing pauses, for up to ``ready_timeout``.

A new version is not there at once: after an ok create the child polls (``settle_polls`` times) for it to
appear and finish processing (``kaggle_versions.py``). Still not settled: the publish returns it as
``pending`` (uploaded, nothing to retry) and ``confirm()`` asks again later. Processing failed (over the private
storage quota?): ``ProcessingFailedError``, never retried for the same files. A settled version's file list is
checked (kaggle 1.6 silently drops a file whose upload failed).

``cancel()`` kills this store's running children (each with its whole process group, `kaggle_process.py`) and
ends the ``publish`` calls in progress.

Example::

    store = KaggleDatasetStore("alice/lm-checkpoints")
    retry_call(lambda: store.publish(stage_folder, "epoch 3, val_loss 1.39"))
    store.fetch(Path("/kaggle/working/restore"))
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning_app.errors import bad_value
from lightning_app.persistence.archive import safe_extract
from lightning_app.persistence.credentials import redact_secrets
from lightning_app.persistence.kaggle_names import METADATA_NAME, check_dataset, local_files
from lightning_app.persistence.kaggle_process import ChildCalls
from lightning_app.persistence.retry import next_poll
from lightning_app.persistence.store_protocol import (
    AuthError,
    NotFoundError,
    ProcessingFailedError,
    PublishedVersion,
    RefusedError,
    RemoteFile,
    StoreError,
    TransientError,
)

_ERRORS = {"auth": AuthError, "transient": TransientError, "not_found": NotFoundError, "refused": RefusedError}


class KaggleDatasetStore:
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
    #: After a create: how many status polls, this far apart (s), before the version counts as ``pending``.
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
        self._unconfirmed: dict[str, Any] | None = None  # the pending version's number floor and files
        self._stored_bytes: int | None = None  # the dataset's size over its versions, once measured

    def __repr__(self) -> str:
        return f"KaggleDatasetStore({self.dataset!r})"

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
            while (result := self._publish_once(args, total, start, refusals))["outcome"] == "busy":
                refusals += result.get("refused", 0)
                if time.monotonic() + pause > deadline:
                    raise TransientError(
                        f"{self.description}: the newest version is still processing ({result['status']}) "
                        f"after {self.ready_timeout:g} s"
                    )
                if self._calls.wait(pause, since=start):
                    raise TransientError(f"{self.description}: publish cancelled")
                pause = next_poll(pause, self.poll_max_interval)
        finally:
            (folder / METADATA_NAME).unlink(missing_ok=True)
        self._created_here = self._created_here or result.get("new_dataset", False)
        sent = 0 if result["outcome"] == "existing" else total
        return self._settled(result, local, sent, time.monotonic() - start)

    def confirm(self) -> PublishedVersion | None:
        """Ask again about the last ``pending`` publish: the version once it is ready, None while it is still
        processing (or when nothing is pending); ``ProcessingFailedError`` when its processing failed."""
        if self._unconfirmed is None:
            return None
        start = time.monotonic()
        args = {"ref": self.dataset, **self._unconfirmed, **self._settle_args(polls=1)}
        version = self._settled(self._call("settle", args), self._unconfirmed["files"], 0, time.monotonic() - start)
        return None if version.pending else version

    def check_access(self) -> str:
        """Cheap check that the credentials work and this dataset can be created or written (no upload).

        Returns a few words on what was found; raises ``AuthError`` or ``RefusedError`` (or another
        ``StoreError``) naming what failed.
        """
        return self._call("check", {"ref": self.dataset})["found"]

    @property
    def stored_bytes(self) -> int | None:
        """The dataset's size over the versions it keeps, as far as the client can tell (None: not known yet)."""
        return self._stored_bytes

    def list_files(self, version: int | None = None) -> list[RemoteFile]:
        """Files of ``version`` (default: the newest ready one)."""
        return list(_remote(self._call("list", {"ref": self._ref(version)})["files"]))

    def fetch(self, dest: Path, version: int | None = None) -> Path:
        """Download ``version`` (default: newest ready) and unpack it into ``dest``; returns ``dest``."""
        dest = Path(dest)
        expected = self.list_files(version)
        dest.mkdir(parents=True, exist_ok=True)
        try:  # beside dest, so the zip lands on the same disk (/kaggle/working, not a small /tmp)
            work = Path(tempfile.mkdtemp(prefix=".kaggle-download-", dir=dest.parent))
        except OSError:
            work = Path(tempfile.mkdtemp(prefix="kaggle-download-"))
        try:
            result = self._call("download", {"ref": self._ref(version), "path": str(work)}, _size(expected))
            safe_extract(result["zip"], dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        wrong = [f.name for f in expected if not (dest / f.name).is_file() or (dest / f.name).stat().st_size != f.size]
        if wrong:
            raise TransientError(f"{self.description}: download does not match the file list: {', '.join(wrong)}")
        return dest

    # -- internals -----------------------------------------------------------------------------------------

    def _settle_args(self, polls: int | None = None) -> dict[str, Any]:
        return {"polls": self.settle_polls if polls is None else polls, "pause": self.settle_pause}

    def _publish_once(self, args: dict[str, Any], total: int, start: float, refusals: int) -> dict[str, Any]:
        first_window = self._created_here and refusals < self.first_version_403_tries
        bound = self.settle_polls * self.settle_pause
        return self._call("publish", {**args, "first_window": first_window}, total, since=start, extra=bound)

    def _settled(self, result: dict[str, Any], local: dict[str, int], sent: int, seconds: float) -> PublishedVersion:
        """A ``PublishedVersion`` from a child's created/existing/pending/failed answer (failed raises)."""
        outcome = result["outcome"]
        if outcome == "failed":
            self._unconfirmed = None
            raise ProcessingFailedError(self._failure_message(result, local))
        if outcome == "pending":
            self._unconfirmed = {"before": result["before"], "files": local}
            files = tuple(RemoteFile(name, size) for name, size in sorted(local.items()))
            return PublishedVersion(None, files, sent, seconds, pending=True, stored_bytes=self._stored_bytes)
        self._unconfirmed = None
        files = self._verify(result["files"], local, result["version"])
        if "stored_bytes" in result:
            self._stored_bytes = result["stored_bytes"]
        elif self._stored_bytes is not None and outcome == "created":
            self._stored_bytes += _size(list(files))
        if self.delete_old_versions:
            self._stored_bytes = _size(list(files))
        return PublishedVersion(result["version"], files, sent, seconds, stored_bytes=self._stored_bytes)

    def _failure_message(self, result: dict[str, Any], local: dict[str, int]) -> str:
        held = result.get("stored_bytes")
        before = f"{held / 1e6:.1f} MB in {result.get('stored_versions', '?')} versions" if held is not None else "?"
        return (
            f"{self.description}: Kaggle accepted the new version, then its processing failed "
            f"(status {result.get('status')!r}); the likely cause is the private storage quota: the dataset "
            f"holds about {before} before this one, which adds {sum(local.values()) / 1e6:.1f} MB "
            f"(delete old versions on kaggle.com, or use --sync.delete_old_versions true)"
        )

    def _ref(self, version: int | None) -> str:
        return self.dataset if version is None else f"{self.dataset}/{int(version)}"

    def _verify(self, listed: list[list[Any]], local: dict[str, int], version: int | None) -> tuple[RemoteFile, ...]:
        """The new version must hold every file at its size (kaggle 1.6 drops failed uploads silently)."""
        remote = dict(map(tuple, listed))
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
        op: str,
        args: dict[str, Any],
        transfer_bytes: int = 0,
        since: float | None = None,
        extra: float = 0.0,
    ) -> dict[str, Any]:
        """Run one ``kaggle_calls`` operation in a child process bounded in time; raise its classified error.

        ``since``: when the operation began; if ``cancel()`` came after that, no child is started. ``extra``:
        seconds the child may spend waiting on purpose (polls after a create).
        """
        bound = self.call_timeout + transfer_bytes / self.transfer_rate_floor + extra
        outcome = self._calls.run(op, args, bound, since)
        if outcome["ok"]:
            return outcome["result"]
        message = redact_secrets(f"{self.description}: {op}: {outcome['message']}")
        if outcome["kind"] == "transient":
            raise TransientError(message, outcome.get("retry_after"))
        raise _ERRORS.get(outcome["kind"], StoreError)(message)


def login_username(call_timeout: float = 120.0) -> str | None:
    """The user the credentials log in as (an access token names its user only at login, over the network).

    Raises ``AuthError`` when the credentials are refused, ``TransientError`` when the service cannot be reached.
    """
    outcome = ChildCalls("kaggle").run("whoami", {}, call_timeout)
    if not outcome["ok"]:
        error = _ERRORS.get(outcome["kind"], StoreError)
        raise error(redact_secrets(f"kaggle: logging in: {outcome['message']}"))
    return outcome["result"]["username"]


def _remote(listed: list[list[Any]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(str(name), int(size)) for name, size in sorted(listed))


def _size(files: list[RemoteFile]) -> int:
    return sum(f.size for f in files)
