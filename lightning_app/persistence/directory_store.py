"""``CheckpointStore`` over a plain folder: a mounted Google Drive on Colab, a network share, or a test's tmp dir.

Layout: one sub-folder per version, ``root/v1/``, ``root/v2/``, ... Each is written under a hidden temporary
name and renamed into place, so a reader sees a version whole or not at all. The version notes live beside the
files in ``.version-notes.txt``, which ``list_files`` and ``fetch`` leave out.

Example::

    store = DirectoryStore("/content/drive/MyDrive/lm-checkpoints")
    store.publish(stage_folder, notes="epoch 3")
    listing = store.read_version(texts=("manifest.json",))  # the newest version
    store.fetch_file("kaggle_epoch_3_20261126-031500.ckpt", Path("checkpoints/.remote"), listing.number)
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

from lightning_app.atomic import atomic_file
from lightning_app.persistence.store import (
    CheckpointStore,
    NotFoundError,
    PublishedVersion,
    RemoteFile,
    StoreError,
    TransientError,
    VersionContents,
)

NOTES_NAME = ".version-notes.txt"
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")


class DirectoryStore(CheckpointStore):
    """Versions of a checkpoint folder kept as ``root/v<N>/`` sub-folders.

    Args:
        root: the folder that holds the versions (created on first publish).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.description = f"dir:{self.root}"

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        """Copy the files directly in ``folder`` (sub-folders are skipped) into a new version."""
        start = time.monotonic()
        sources = _files_in(Path(folder))
        if not sources:
            raise StoreError(f"{self.description}: nothing to publish in {folder}")
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            for source in sources:
                _copy_durably(source, staging / source.name)
            (staging / NOTES_NAME).write_text(notes)
            number = self._rename_into_place(staging)
        except OSError as error:
            raise TransientError(f"{self.description}: publish failed: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        files = tuple(RemoteFile(s.name, s.stat().st_size) for s in sources)
        return PublishedVersion(number, files, sum(f.size for f in files), time.monotonic() - start)

    def read_version(self, version: int | None = None, texts: tuple[str, ...] = ()) -> VersionContents:
        """Number, files (sorted by name) and the small ``texts`` of ``version`` (default newest)."""
        folder = self._version_folder(version)
        try:
            files = _files_in(folder)
            found = {p.name: p.read_text() for p in files if p.name in texts}
            listed = tuple(RemoteFile(p.name, p.stat().st_size) for p in files)
        except OSError as error:
            raise TransientError(f"{self.description}: cannot read {folder.name}: {error}") from error
        return VersionContents(int(folder.name[1:]), listed, found)

    def fetch_file(self, name: str, dest: Path, version: int, size: int | None = None) -> Path:
        """Copy ``name`` of ``version`` into ``dest`` (whole or not at all)."""
        source = self._version_folder(version) / name
        target = Path(dest) / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as reader, atomic_file(target) as writer:
                shutil.copyfileobj(reader, writer, 1 << 22)
        except FileNotFoundError:
            raise NotFoundError(f"{self.description}: version {version} has no {name}") from None
        except OSError as error:
            raise TransientError(f"{self.description}: cannot fetch {name}: {error}") from error
        return target

    def versions(self) -> list[int]:
        """Published version numbers, ascending."""
        if not self.root.is_dir():
            return []
        numbers = []
        for entry in self.root.iterdir():
            match = _VERSION_RE.match(entry.name)
            if match and entry.is_dir():
                numbers.append(int(match[1]))
        return sorted(numbers)

    def _version_folder(self, version: int | None) -> Path:
        numbers = self.versions()
        if not numbers:
            raise NotFoundError(f"{self.description}: nothing published yet")
        number = numbers[-1] if version is None else version
        if number not in numbers:
            raise NotFoundError(f"{self.description}: no version {version} (have {numbers[0]}..{numbers[-1]})")
        return self.root / f"v{number}"

    def _rename_into_place(self, staging: Path) -> int:
        """Rename ``staging`` to the next free ``v<N>``; a racing publisher that took N pushes us to N + 1."""
        for _ in range(100):
            number = (self.versions() or [0])[-1] + 1
            try:
                # os.rename onto an existing non-empty folder fails on POSIX and Windows: never a merge.
                os.rename(staging, self.root / f"v{number}")
                return number
            except FileExistsError:
                continue
            except OSError:
                if (self.root / f"v{number}").exists():
                    continue
                raise
        raise TransientError(f"{self.description}: could not claim a version number")


def _files_in(folder: Path) -> list[Path]:
    """Regular files directly in ``folder``, sorted by name, without the notes file."""
    if not folder.is_dir():
        raise StoreError(f"not a folder: {folder}")
    return sorted((p for p in folder.iterdir() if p.is_file() and p.name != NOTES_NAME), key=lambda p: p.name)


def _copy_durably(source: Path, target: Path) -> None:
    """Copy and fsync, so that a version renamed into place survives a crash (or a Drive unmount)."""
    with open(source, "rb") as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 22)
        writer.flush()
        os.fsync(writer.fileno())
