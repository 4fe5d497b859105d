"""Download one file of a dataset version (``dataset_download_file``), on the disk it is meant for.

The service answers a one-file download with a 302 to a storage URL; the client names the local file after that
URL, and a large file arrives wrapped in a zip named ``<name>.zip`` holding just that file (the size above which
this happens is not published). kaggle 2.2.5 can unwrap it (``unzip=True``), kaggle 1.8 cannot, so the child
does it itself for both: the result is always the plain file.

The file is downloaded into a scratch folder inside ``path`` (never ``/tmp``: on Kaggle that is another, smaller
disk) and moved into ``path`` with ``os.replace``; so the extra disk at the peak is one file, or for a wrapped
one the zip plus the file. Before writing, the free space is checked (the expected size, then the member's size
before unwrapping): kaggle 2.2.5 retries an out-of-space write five times over about a minute before giving up.

Example::

    done = download_file("alice/lm-checkpoints/7", "epoch=3.ckpt", Path("/kaggle/working/ckpt/.restore"),
                         expected_size=574_848)
    os.replace(done.path, final_path)     # same disk: a rename, never a copy
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_app.persistence.credentials import redact_secrets
from lightning_app.persistence.kaggle_errors import Failure
from lightning_app.persistence.kaggle_process import ChildCalls
from lightning_app.persistence.store_protocol import (
    AuthError,
    NotFoundError,
    RefusedError,
    StoreError,
    TransientError,
)

#: The child's failure kind for a disk without room for the file (read as ``NoSpaceError``).
DISK_FULL = "disk_full"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: A marker kaggle 2.2.5 keeps beside a download in progress (it resumes from it); never the file itself.
_PARTIAL_SUFFIX = ".kaggle-partial"


@dataclass(frozen=True)
class DownloadedFile:
    """A file downloaded by ``download_file``.

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


class NoSpaceError(StoreError):
    """The folder's disk has no room for the file (ENOSPC/EDQUOT, or less free space than it needs)."""


_ERRORS = {"auth": AuthError, "not_found": NotFoundError, "refused": RefusedError, DISK_FULL: NoSpaceError}


def download_file(
    ref: str,
    name: str,
    folder: Path,
    *,
    expected_size: int | None = None,
    call_timeout: float = 120.0,
    transfer_rate_floor: float = 1e6,
) -> DownloadedFile:
    """Download file ``name`` of ``ref`` (``owner/slug`` for the newest ready version, or ``owner/slug/N``) into
    ``folder``, in a child process killed after ``call_timeout + expected_size / transfer_rate_floor`` seconds.

    Raises ``TransientError`` (network, 5xx, 429 with its ``retry_after``, a cut-off or damaged download, a size
    other than ``expected_size``), ``AuthError``, ``NotFoundError`` (no such dataset, version or file),
    ``NoSpaceError``, or ``StoreError``.
    """
    folder = Path(folder).absolute()
    args = {"ref": ref, "name": name, "path": str(folder), "size": expected_size}
    bound = call_timeout + (expected_size or 0) / transfer_rate_floor
    outcome = ChildCalls(f"kaggle:{ref}").run("download_file", args, bound)
    if not outcome["ok"]:
        message = redact_secrets(f"kaggle:{ref}: downloading {name}: {outcome['message']}")
        if outcome["kind"] == "transient":
            raise TransientError(message, outcome.get("retry_after"))
        raise _ERRORS.get(outcome["kind"], StoreError)(message)
    result = outcome["result"]
    if expected_size is not None and result["bytes"] != expected_size:
        Path(result["path"]).unlink(missing_ok=True)
        raise TransientError(f"kaggle:{ref}: {name} arrived with {result['bytes']} bytes, not {expected_size}")
    return DownloadedFile(Path(result["path"]), int(result["bytes"]), bool(result["wrapped"]), int(result["peak"]))


# -- child side (kaggle_calls "download_file") ---------------------------------------------------------------------


def op_download_file(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Download one file into ``args["path"]``: ``{"path", "bytes", "wrapped", "peak"}``.

    ``args``: ``ref`` (``owner/slug`` or ``owner/slug/N``), ``name`` (a file directly in the version),
    ``path`` (the folder to put it in), ``size`` (its expected size, or None).
    """
    ref, name, folder = str(args["ref"]), str(args["name"]), Path(args["path"])
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise Failure("error", f"{name!r} is not the name of a file directly in a dataset version")
    folder.mkdir(parents=True, exist_ok=True)
    if args.get("size") is not None:
        _need_room(folder, int(args["size"]), name)
    work = Path(tempfile.mkdtemp(prefix=".kaggle-file-", dir=folder))
    try:
        try:  # force: never resume onto, nor keep, a file left by an earlier attempt
            api.dataset_download_file(ref, name, path=str(work), force=True, quiet=True)
        except OSError as error:
            if getattr(error, "errno", None) in _NO_SPACE:
                raise Failure(DISK_FULL, f"no space left in {folder} for {name} ({error})") from error
            raise
        arrived, zip_bytes = work / name, 0
        wrapped = not arrived.is_file()
        if wrapped:
            arrived = work / f"{name}.zip"
            if not arrived.is_file():
                left = sorted(p.name for p in work.iterdir() if not p.name.endswith(_PARTIAL_SUFFIX))
                raise Failure("transient", f"the download of {name} left {left or 'nothing'}")
            zip_bytes = arrived.stat().st_size
            arrived = _unwrap(arrived, work / f"{name}.part", folder, name)
        target = folder / name
        os.replace(arrived, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = target.stat().st_size
    return {"path": str(target), "bytes": size, "wrapped": wrapped, "peak": size + zip_bytes}


def _unwrap(archive: Path, part: Path, folder: Path, name: str) -> Path:
    """The one file inside ``archive`` written to ``part`` (on the same disk); the zip is removed."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise Failure("error", f"{name} arrived as {archive.name} holding {len(members)} files, not one")
            _need_room(folder, members[0].file_size, name)
            try:
                with zipped.open(members[0]) as source, open(part, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except OSError as error:
                if getattr(error, "errno", None) in _NO_SPACE:
                    raise Failure(DISK_FULL, f"no space left in {folder} to unwrap {name} ({error})") from error
                raise
    except zipfile.BadZipFile as error:  # cut off or damaged on the way: another attempt can succeed
        raise Failure("transient", f"{name} arrived as a damaged {archive.name} ({error})") from error
    archive.unlink()
    return part


def _need_room(folder: Path, size: int, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < size:
        raise Failure(
            DISK_FULL, f"no space left in {folder} for {name}: {free / 1e6:.1f} MB free, it needs {size / 1e6:.1f} MB"
        )
