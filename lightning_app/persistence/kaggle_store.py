"""``CheckpointStore`` on a private Kaggle Dataset: each publish is a new dataset version.

Every network operation runs in a child process (``kaggle_calls.py``) that is killed when its bound passes:
``call_timeout`` plus, for uploads and downloads, ``bytes / transfer_rate_floor``. The ``kaggle`` client is never
imported in this process. A killed or failed child becomes ``TransientError``, ``AuthError``, ``NotFoundError``
or ``StoreError``; messages never hold the key.

One publish is normally one child: it creates the dataset if it is missing; otherwise, once the newest version is
ready, it adds a version unless that newest version already holds exactly these files (names and sizes). That
check makes ``publish`` safe to retry although CreateDatasetVersion is not idempotent (a reply lost after the
server committed, or a child killed mid-call). While the newest version is still processing the child answers
"busy" and this process polls again with growing pauses, for up to ``ready_timeout``. After publishing, the new
version's file list is checked (kaggle 1.6 silently drops a file whose upload failed).

``cancel()`` kills this store's running children (each with its whole process group) and ends the ``publish``
calls in progress; children still running at interpreter exit are killed too, so no abandoned upload can become
the newest version after the run ended.

Example::

    store = KaggleDatasetStore("alice/lm-checkpoints")
    retry_call(lambda: store.publish(stage_folder, "epoch 3, val_loss 1.39"))
    store.fetch(Path("/kaggle/working/restore"))
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from lightning_app.errors import bad_value
from lightning_app.persistence.archive import safe_extract
from lightning_app.persistence.credentials import redact_secrets
from lightning_app.persistence.store_protocol import (
    AuthError,
    NotFoundError,
    PublishedVersion,
    RefusedError,
    RemoteFile,
    StoreError,
    TransientError,
)

#: Read by the client to learn the dataset's id, title and license; never uploaded.
METADATA_NAME = "dataset-metadata.json"
#: Files the client silently never uploads: publishing one would lose it.
_SKIPPED_BY_CLIENT = re.compile(
    r"^(datapackage\.json|kernel-metadata\.json|model-metadata\.json|model-instance-metadata\.json"
    r"|dataset-cover-image\.(png|jpg|jpeg|webp))$"
)
_DATASET_RE = re.compile(r"^[A-Za-z0-9_-]+/[a-z0-9-]{6,50}$")
DATASET_RULE = "OWNER/SLUG with a slug of 6 to 50 lower-case letters, digits or '-', e.g. alice/rope-small-checkpoints"
_ERRORS = {"auth": AuthError, "transient": TransientError, "not_found": NotFoundError, "refused": RefusedError}
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Every running child of every store, killed at interpreter exit (a daemon worker's child would outlive us).
_LIVE: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


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
    """

    #: First and longest pause between status polls while the previous version is processing.
    poll_interval = 1.0
    poll_max_interval = 15.0

    def __init__(
        self,
        dataset: str,
        *,
        title: str | None = None,
        call_timeout: float = 120.0,
        transfer_rate_floor: float = 1e6,
        ready_timeout: float = 600.0,
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
        self.description = f"kaggle:{dataset}"
        self._children: set[subprocess.Popen] = set()
        self._cancelled_at = float("-inf")  # calls begun before this monotonic time start no more children

    def __repr__(self) -> str:
        return f"KaggleDatasetStore({self.dataset!r})"

    def cancel(self) -> None:
        """Kill the children running now (with their process groups) and end the publishes in progress."""
        with _LIVE_LOCK:
            self._cancelled_at = time.monotonic()
            children = list(self._children)
        for process in children:
            _kill(process)

    # -- CheckpointStore -----------------------------------------------------------------------------------

    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        """Publish the files directly in ``folder`` as the newest version (creating the private dataset).

        ``folder`` should be a fresh staging folder per checkpoint: the client's resumable-upload cache is keyed
        by path, size and mtime, and a retry of the same folder reuses the blobs it already uploaded.
        ``dataset-metadata.json`` in ``folder`` is written here and removed afterwards.
        """
        start = time.monotonic()
        folder = Path(folder)
        local = _local_files(folder)
        total = sum(local.values())
        metadata = {"title": self.title, "id": self.dataset, "licenses": [{"name": "CC0-1.0"}]}
        (folder / METADATA_NAME).write_text(json.dumps(metadata, indent=2))
        args = {"ref": self.dataset, "folder": str(folder), "notes": notes, "files": local}
        deadline = time.monotonic() + self.ready_timeout
        pause = self.poll_interval
        try:
            while (result := self._call("publish", args, total, since=start))["outcome"] == "busy":
                if time.monotonic() + pause > deadline:
                    raise TransientError(
                        f"{self.description}: the newest version is still processing ({result['status']}) "
                        f"after {self.ready_timeout:g} s"
                    )
                time.sleep(pause)
                pause = min(pause * 1.5, self.poll_max_interval)
        finally:
            (folder / METADATA_NAME).unlink(missing_ok=True)
        files = self._verify(result["files"], local, result["version"])
        sent = total if result["outcome"] == "created" else 0
        return PublishedVersion(result["version"], files, sent, time.monotonic() - start)

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
        self, op: str, args: dict[str, Any], transfer_bytes: int = 0, since: float | None = None
    ) -> dict[str, Any]:
        """Run one ``kaggle_calls`` operation in a child process bounded in time; raise its classified error.

        ``since``: when the operation began; if ``cancel()`` came after that, no child is started.
        """
        bound = self.call_timeout + transfer_bytes / self.transfer_rate_floor
        with tempfile.TemporaryDirectory(prefix="kaggle-call-") as tmp:
            args_path, result_path, log_path = (Path(tmp) / n for n in ("args.json", "result.json", "stderr.txt"))
            args_path.write_text(json.dumps(args))
            command = [sys.executable, "-m", "lightning_app.persistence.kaggle_calls", op, str(args_path)]
            with open(log_path, "wb") as log, _LIVE_LOCK:  # under the lock: cancel() sees every child
                if since is not None and self._cancelled_at >= since:
                    raise TransientError(f"{self.description}: {op} cancelled")
                process = subprocess.Popen(
                    [*command, str(result_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # "Dataset URL: ..." and other chatter
                    stderr=log,
                    env=_child_env(),
                    start_new_session=True,  # its own process group: killing it kills anything it started
                )
                self._children.add(process)
                _LIVE.add(process)
            try:
                returncode = process.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                raise TransientError(f"{self.description}: {op} timed out after {bound:.1f} s") from None
            finally:
                _kill(process)
                with _LIVE_LOCK:
                    self._children.discard(process)
            if not result_path.exists():
                tail = redact_secrets(log_path.read_text(errors="replace")[-800:].strip())
                error = TransientError if returncode < 0 else StoreError
                raise error(f"{self.description}: {op} exited with code {returncode} and no result: {tail}")
            outcome = json.loads(result_path.read_text())
        if outcome["ok"]:
            return outcome["result"]
        message = redact_secrets(f"{self.description}: {op}: {outcome['message']}")
        if outcome["kind"] == "transient":
            raise TransientError(message, outcome.get("retry_after"))
        raise _ERRORS.get(outcome["kind"], StoreError)(message)


def check_dataset(option: str, dataset: str) -> None:
    """Raise ``ConfigError`` (one line) unless ``dataset`` follows Kaggle's OWNER/SLUG rule."""
    if not _DATASET_RE.match(dataset):
        raise bad_value(option, dataset, DATASET_RULE)


def _local_files(folder: Path) -> dict[str, int]:
    """``{name: size}`` of the regular files directly in ``folder`` (what the client will upload)."""
    if not folder.is_dir():
        raise StoreError(f"not a folder: {folder}")
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != METADATA_NAME}
    skipped = sorted(name for name in files if _SKIPPED_BY_CLIENT.match(name))
    if skipped:
        raise StoreError(f"the kaggle client never uploads {', '.join(skipped)}: rename before publishing")
    if not files:
        raise StoreError(f"nothing to publish in {folder}")
    return files


def _remote(listed: list[list[Any]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(str(name), int(size)) for name, size in sorted(listed))


def _size(files: list[RemoteFile]) -> int:
    return sum(f.size for f in files)


def _child_env() -> dict[str, str]:
    """This process's environment (credentials, TMPDIR for the upload cache, proxies), able to import us."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*paths, _PACKAGE_ROOT])
    return env


def _kill(process: subprocess.Popen) -> None:
    """Kill the child's process group if it is still running, and reap it."""
    if process.poll() is None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                process.kill()
        except ProcessLookupError:
            pass
    process.wait()


@atexit.register
def _kill_live_children() -> None:
    with _LIVE_LOCK:
        children = list(_LIVE)
    for process in children:
        _kill(process)
