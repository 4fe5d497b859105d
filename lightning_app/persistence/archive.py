"""Unpack a downloaded archive without letting any member land outside the destination ("zip slip").

Every member is checked before anything is written: an archive with one bad member extracts nothing, and the
error names that member. Zip archives (what Kaggle serves) and tar archives (plain or compressed) are handled.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import zipfile
from pathlib import Path

from lightning_app.persistence.store_protocol import StoreError


def safe_extract(archive_path: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract ``archive_path`` (zip or tar) into ``dest``, refusing any member that would escape it.

    Args:
        archive_path: the archive file.
        dest: the folder to extract into (created if missing).

    Returns:
        The extracted regular files, in archive order.

    Raises:
        StoreError: the archive is unreadable, or a member is absolute, climbs out of ``dest`` (``../``), or is a
            link or device (tar); the message names the member. Nothing is extracted then.
    """
    archive_path = Path(archive_path)
    dest = Path(dest)
    try:
        if zipfile.is_zipfile(archive_path):
            return _extract_zip(archive_path, dest)
        if tarfile.is_tarfile(archive_path):
            return _extract_tar(archive_path, dest)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise StoreError(f"cannot unpack {archive_path.name}: {error}") from error
    raise StoreError(f"cannot unpack {archive_path.name}: neither a zip nor a tar archive")


def _safe_relative(name: str, archive: Path) -> str:
    """The member name as a normalised relative POSIX path; ``StoreError`` if it is absolute or escapes."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or "\0" in unified:
        raise StoreError(f"refusing to unpack {archive.name}: member {name!r} has an absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        raise StoreError(f"refusing to unpack {archive.name}: member {name!r} would land outside the destination")
    return normal


def _extract_zip(archive: Path, dest: Path) -> list[Path]:
    with zipfile.ZipFile(archive) as zf:
        members = [(info, _safe_relative(info.filename, archive)) for info in zf.infolist()]
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for info, relative in members:
            target = dest / relative
            if info.is_dir() or relative == ".":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written by hand rather than with ZipFile.extract: a symlink entry becomes a plain file holding the
            # link text, never a link.
            with zf.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            written.append(target)
    return written


def _extract_tar(archive: Path, dest: Path) -> list[Path]:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_relative(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise StoreError(f"refusing to unpack {archive.name}: member {member.name!r} is a link or device")
        dest.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second, independent check
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - older interpreters; every member was vetted above
            tf.extractall(dest, members=members)
    return [dest / _safe_relative(m.name, archive) for m in members if m.isfile()]
