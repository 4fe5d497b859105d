"""Files that appear whole or not at all: written beside the target under a temporary name, fsynced, renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``.<name>.<random>.tmp`` beside ``path`` for writing bytes; on a clean exit flush, fsync and
    ``os.replace`` it onto ``path`` (readers see the old file or the new one, never half), otherwise remove it.

    The temporary name is unique, so two processes writing the same target never share a file; the last rename
    wins.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with open(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)
