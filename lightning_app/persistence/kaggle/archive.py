"""Unpack a downloaded dataset zip without letting any member land outside the destination ("zip slip").

Every member is checked before anything is written: an archive with one bad member extracts nothing, and the
error names that member. Kaggle serves zip archives only.
"""

from __future__ import annotations

import os
import posixpath
import zipfile
from pathlib import Path

from lightning_app.persistence.store import StoreError


def safe_extract(archive_path: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract the zip ``archive_path`` into ``dest`` (created if missing), refusing any member that would escape.

    Returns the extracted regular files, in archive order. Raises ``StoreError`` when the archive is unreadable or
    a member is absolute or climbs out of ``dest`` (``../``); the message names the member, and nothing is
    extracted then. A symlink entry becomes a plain file holding the link text (``zipfile`` never makes links).
    """
    archive_path, dest = Path(archive_path), Path(dest)
    try:
        with zipfile.ZipFile(archive_path) as zf:
            members = zf.infolist()
            relative = [_safe_relative(info.filename, archive_path) for info in members]
            zf.extractall(dest)
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise StoreError(f"cannot unpack {archive_path.name}: {error}") from error
    return [dest / name for info, name in zip(members, relative) if not info.is_dir() and name != "."]


def _safe_relative(name: str, archive: Path) -> str:
    """The member name as a normalised relative POSIX path; ``StoreError`` if it is absolute or escapes."""
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or "\0" in unified:
        raise StoreError(f"refusing to unpack {archive.name}: member {name!r} has an absolute path")
    normal = posixpath.normpath(unified)
    if normal == ".." or normal.startswith("../"):
        raise StoreError(f"refusing to unpack {archive.name}: member {name!r} would land outside the destination")
    return normal
