"""The checkpoint folder's one owner: every name in it, its manifest, what a version is staged from, what a killed
run left, and the checkpoints ``--resume`` can find in it.

A folder (``checkpoints/`` by default; on Kaggle ``/kaggle/working/checkpoints``) holds::

    kaggle_epoch_<epoch>_<UTC YYYYmmdd-HHMMSS>[-NN].ckpt   checkpoints (names never reused: see `next_name`)
    manifest.json                                         what each one holds (``manifest.py``), rewritten atomically
    .staging/<stem>-<id>/                                 a version being published (hard links, a manifest of them)
    .remote/                                              a checkpoint ``--resume`` is downloading
    .<name>.tmp/ and .<name>.<random>.tmp                 a file being written

Only global rank 0 makes a `CheckpointFolder` to write; anything may read one (`candidates`, `read_manifest`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lightning_app.atomic import atomic_file, write_bytes_atomically
from lightning_app.persistence.manifest import CheckpointEntry, Manifest

log = logging.getLogger("lightning_app.restore")

FILE_PREFIX = "kaggle_epoch_"
CHECKPOINT_GLOB = f"{FILE_PREFIX}*.ckpt"
MANIFEST_NAME = "manifest.json"
STAGING_DIR = ".staging"
REMOTE_DIR = ".remote"
#: Where a checkpoint file keeps `KaggleModelCheckpoint`'s state (its ``state_key``), ``run_id`` included.
RUN_STATE_KEY = "KaggleModelCheckpoint"
_NAME_RE = re.compile(rf"^{FILE_PREFIX}(?P<epoch>\d+)_(?P<timestamp>\d{{8}}-\d{{6}})(?:-(?P<seq>\d+))?\.ckpt$")


def parse_checkpoint_name(name: str) -> tuple[int, str] | None:
    """``kaggle_epoch_3_20261126-031500.ckpt`` -> ``(3, "20261126-031500")``; None for other names."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    timestamp = match["timestamp"] + (f"-{int(match['seq']):02d}" if match["seq"] else "")
    return int(match["epoch"]), timestamp


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """``folder/manifest.json``; None when it is missing or unreadable (callers then scan the files)."""
    try:
        return Manifest.from_json((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically."""
    path = Path(folder) / MANIFEST_NAME
    write_bytes_atomically(path, manifest.to_json().encode())
    return path


def entry_from_file(path: Path) -> CheckpointEntry | None:
    """An entry for a checkpoint the manifest lacks, by loading it (memory-mapped: only what is read)."""
    parsed = parse_checkpoint_name(path.name)
    if parsed is None:
        return None
    import torch

    epoch, timestamp = parsed
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = int(ckpt.get("global_step", -1))
        hparams = ckpt.get("hyper_parameters", {})
        settings = {k: hparams[k] for k in ("pe_type", "model_size", "vocab_size") if k in hparams}
        run_state = ckpt.get("callbacks", {}).get(RUN_STATE_KEY, {})
        run_id, written_at = str(run_state.get("run_id", "")), float(run_state.get("written_at", 0.0))
    except Exception as error:  # noqa: BLE001 - an unreadable file is not a candidate
        log.warning(f"Skipping {path}: it does not load ({type(error).__name__}: {error})")
        return None
    size = path.stat().st_size
    return CheckpointEntry(
        path.name, epoch, step, timestamp, size, run_id=run_id, settings=settings, written_at=written_at
    )


@dataclass
class Candidate:
    """One checkpoint ``--resume`` could continue from: in the local folder, an attached input, or a dataset.

    Attributes:
        source: ``local``, ``input`` or ``remote``.
        path: where the file is (for a remote one: where it lands once fetched).
        entry: its manifest entry.
        in_manifest: False when it was found by scanning (the step came from loading the file).
        verified: None until checked.
        origin: where it came from, for the log, when its path does not say (``kaggle:o/s version 7``).
        fetch: for a remote candidate, downloads it to ``path`` (once; `verify` calls it).
        problem: why it did not verify.
        history: the metric history published with it (None: none was); a remote candidate's is read with its
            version's manifest, the others' once ``--resume`` has chosen one.
    """

    source: str
    path: Path
    entry: CheckpointEntry
    in_manifest: bool
    verified: bool | None = None
    origin: str = ""
    fetch: object = None
    problem: str = ""
    history: str | None = None
    order_key: tuple[float, int, str] = field(init=False)  # see `CheckpointEntry.order_key`

    def __post_init__(self) -> None:
        self.order_key = self.entry.order_key

    def describe(self) -> str:
        return f"{self.path.name} (epoch {self.entry.epoch}, step {self.entry.global_step})"


def verify(candidate: Candidate) -> str | None:
    """None when the file is what its manifest says (size and sha256); else what is wrong. A remote candidate must
    be fetched first."""
    if not candidate.in_manifest:
        return None  # it loaded when it was scanned
    entry = candidate.entry
    try:
        size = candidate.path.stat().st_size
        if entry.size and size != entry.size:
            return f"size {size} bytes, the manifest says {entry.size}"
        if entry.sha256 and sha256_of(candidate.path) != entry.sha256:
            return "sha256 differs from the manifest"
    except OSError as error:
        return f"unreadable ({error})"
    return None


def candidates_in(folder: Path, source: str) -> list[Candidate]:
    """Candidates directly in ``folder``: manifest entries whose file exists, then files the manifest lacks."""
    manifest = read_manifest(folder) or Manifest()
    found = [
        Candidate(source, folder / entry.file, entry, in_manifest=True)
        for entry in manifest.entries.values()
        if (folder / entry.file).is_file()
    ]
    for path in sorted(folder.glob(CHECKPOINT_GLOB)):
        if path.name not in manifest.entries and path.is_file():
            entry = entry_from_file(path)
            if entry is not None:
                found.append(Candidate(source, path, entry, in_manifest=False, verified=True))
    return found


def candidates_under(root: Path, source: str) -> list[Candidate]:
    """Candidates anywhere under ``root`` (``/kaggle/input/<slug>/``, ``/kaggle/input/datasets/<o>/<s>/``...)."""
    if not root.is_dir():
        return []
    found: list[Candidate] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d not in (STAGING_DIR, REMOTE_DIR)]
        if MANIFEST_NAME in files or any(parse_checkpoint_name(f) for f in files):
            found.extend(candidates_in(Path(folder), source))
    return found


@dataclass
class Cleanup:
    """What `CheckpointFolder.clean` did."""

    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    adopted: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        if self.removed:
            names = ", ".join(sorted(p.name for p in self.removed)[:5]) + (", ..." if len(self.removed) > 5 else "")
            freed = f"{self.freed_bytes / 1e6:.1f} MB freed"
            parts.append(f"removed {len(self.removed)} leftovers of a killed run ({names}), {freed}")
        if self.adopted:
            names = ", ".join(self.adopted)
            parts.append(f"adopted {len(self.adopted)} complete checkpoints missing from the manifest ({names})")
        return "; ".join(parts)


def freed_by_deleting(path: Path) -> int:
    """Bytes that deleting ``path`` gives back: files with no other hard link (a staged link keeps the blocks)."""
    paths = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for p in paths:
        try:
            stat = p.lstat()
        except OSError:
            continue
        total += stat.st_size if stat.st_nlink == 1 else 0
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def disk_full_line(folder: Path, free: int, needed: int) -> str:
    """``disk full in /kaggle/working/checkpoints (2.0 MB free, a checkpoint needs 3.5 MB)``."""
    return f"disk full in {folder} ({free / 1e6:.1f} MB free, a checkpoint needs {needed / 1e6:.1f} MB)"


def out_of_space(error: BaseException, folder: Path, needed: int) -> bool:
    """Whether a failed write ran out of disk: ENOSPC or EDQUOT, or torch's zip writer failing (it never says
    "space": ``unexpected pos``, ``failed writing file``) while the folder's disk has less than ``needed`` free."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    torch_writer = isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("inline_container", "PytorchStreamWriter", "file write failed")
    )
    return torch_writer and free_bytes(folder) < needed


@dataclass(frozen=True)
class DiskFull:
    """A checkpoint that could not be written for lack of space, even after `CheckpointFolder.make_room`."""

    folder: Path
    free: int
    needed: int
    name: str
    step: int

    def describe(self) -> str:
        return disk_full_line(self.folder, self.free, self.needed)


@dataclass
class Room:
    """What `CheckpointFolder.make_room` did: the free bytes it found, the checkpoints it removed, the bytes it
    really gave back (a file a staged hard link still holds gives none)."""

    free_before: int
    removed: list[str] = field(default_factory=list)
    freed: int = 0


def _holds(path: Path, entry: CheckpointEntry) -> bool:
    """Whether ``path`` is already the file ``entry`` describes."""
    return path.is_file() and verify(Candidate("local", path, entry, in_manifest=bool(entry.sha256))) is None


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(f".{FILE_PREFIX}"))


class CheckpointFolder:
    """One folder of checkpoints and its ``manifest.json``, written by global rank 0 alone.

    Args:
        path: the folder (created when missing).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = read_manifest(self.path) or Manifest()

    @property
    def remote_dir(self) -> Path:
        """Where ``--resume`` downloads a checkpoint before it is moved into the folder (same disk)."""
        return self.path / REMOTE_DIR

    def save_manifest(self) -> None:
        write_manifest(self.path, self.manifest)

    # -- names ---------------------------------------------------------------------------------------------

    def next_name(self, epoch: int, also_taken: Iterable[str] = ()) -> str:
        """A name never held by this folder's manifest nor on disk: ``-01``, ``-02``... within one second."""
        base = f"{FILE_PREFIX}{epoch}_{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        taken = set(also_taken)
        name, seq = f"{base}.ckpt", 0
        while name in taken or self.manifest.ever_held(name) or (self.path / name).exists():
            seq += 1
            name = f"{base}-{seq:02d}.ckpt"
        return name

    @staticmethod
    def timestamp_of(name: str) -> str:
        parsed = parse_checkpoint_name(name)
        if parsed is None:
            raise ValueError(f"not a checkpoint name: {name!r}")
        return parsed[1]

    # -- retention -----------------------------------------------------------------------------------------

    def record(self, entry: CheckpointEntry, keep_last: int | None) -> list[str]:
        """Add a finished checkpoint's entry, delete its run's checkpoints beyond the newest ``keep_last`` (the
        run's best is kept besides them; other runs' files are never touched), save the manifest. Returns the
        names deleted."""
        if entry.best:
            for other in self.manifest.newest_first(entry.run_id):
                other.best = False
        self.manifest.add(entry)
        deleted = []
        if keep_last is not None:
            for old in [e for e in self.manifest.newest_first(entry.run_id) if not e.best][keep_last:]:
                self.delete(old.file)
                deleted.append(old.file)
        self.save_manifest()
        return deleted

    def make_room(self, run_id: str, needed: int, keep: set[str], staged_in_use: set[Path]) -> Room:
        """Free space for a checkpoint of ``needed`` bytes after a write ran out of it: staged versions no publish
        uses any more first, then this run's oldest checkpoints, never its newest one, its best one, one in
        ``keep`` (waiting to be published) nor another run's. Stops once enough is free; saves the manifest."""
        room = Room(free_bytes(self.path))
        staging = self.path / STAGING_DIR
        for staged in sorted(staging.iterdir()) if staging.is_dir() else []:
            if staged.resolve() not in {p.resolve() for p in staged_in_use}:
                room.freed += freed_by_deleting(staged)
                shutil.rmtree(staged, ignore_errors=True)
        entries = self.manifest.newest_first(run_id)
        protected = {e.file for e in entries[:1]} | {e.file for e in entries if e.best} | keep
        for entry in reversed(entries):  # the oldest first
            if room.free_before + room.freed >= needed:
                break
            if entry.file not in protected:
                room.freed += freed_by_deleting(self.path / entry.file)
                self.delete(entry.file)
                room.removed.append(entry.file)
        if room.removed:
            self.save_manifest()
        return room

    def delete(self, name: str) -> None:
        """Delete checkpoint ``name`` and forget it (its name is never given again); the caller saves the manifest."""
        (self.path / name).unlink(missing_ok=True)
        self.manifest.discard(name)

    # -- publishing ----------------------------------------------------------------------------------------

    def stage(self, entries: Sequence[CheckpointEntry], extra: Sequence[Path] = ()) -> Path:
        """A fresh ``.staging/<stem>-<id>/`` holding exactly ``entries``' checkpoints (hard links, copies where
        links are impossible), a manifest of just them, and the files ``extra`` (copied): what one version holds.

        Links, so that retention may delete a checkpoint while its upload runs; a fresh folder per version,
        because the kaggle client caches resumable uploads by path, name, size and mtime.
        """
        present = [e for e in entries if (self.path / e.file).is_file()]
        stem = Path(present[0].file).stem if present else "empty"
        target = self.path / STAGING_DIR / f"{stem}-{uuid.uuid4().hex[:8]}"
        target.mkdir(parents=True)
        for entry in present:
            try:
                os.link(self.path / entry.file, target / entry.file)
            except OSError:
                shutil.copy2(self.path / entry.file, target / entry.file)
        for path in extra:
            if path.is_file():
                shutil.copyfile(path, target / path.name)
        write_manifest(target, Manifest(list(present)))
        return target

    @staticmethod
    def discard_staged(staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    # -- restore -------------------------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """This folder's checkpoints as ``--resume`` candidates (source ``local``)."""
        return candidates_in(self.path, "local")

    def adopt(self, candidate: Candidate) -> Path:
        """Make ``candidate`` a checkpoint of this folder and merge its manifest entry; returns its path here.

        A file fetched into `remote_dir` is moved (``os.replace``: same disk, no second copy); a file elsewhere
        (an attached, read-only input) is copied atomically and never written to.
        """
        target = self.path / candidate.path.name
        if candidate.path.resolve() == target.resolve():
            return target
        if candidate.path.parent.resolve().is_relative_to(self.remote_dir.resolve()):
            os.replace(candidate.path, target)
        elif not _holds(target, candidate.entry):
            with atomic_file(target) as copy, open(candidate.path, "rb") as source:
                shutil.copyfileobj(source, copy, length=1 << 24)
        self.manifest.add(candidate.entry)
        self.save_manifest()
        return target

    # -- a killed run's leftovers --------------------------------------------------------------------------

    def clean(self) -> Cleanup:
        """Remove what a killed run left (staged versions, downloads, half-written files) and adopt its orphaned
        complete checkpoints into the manifest. Run on global rank 0 before the first save, after any restore."""
        cleanup = Cleanup()
        for item in os.scandir(self.path):
            path = Path(item.path)
            if item.name in (STAGING_DIR, REMOTE_DIR) and item.is_dir(follow_symlinks=False):
                cleanup.freed_bytes += freed_by_deleting(path)
                shutil.rmtree(path, ignore_errors=True)
                cleanup.removed.append(path)
            elif _is_temporary(item.name) and not item.is_symlink():
                cleanup.freed_bytes += freed_by_deleting(path)
                if item.is_dir():  # a checkpoint being written: `.<name>.tmp/archive`
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                cleanup.removed.append(path)
        for path in sorted(self.path.glob(CHECKPOINT_GLOB)):
            if path.name in self.manifest.entries or not path.is_file():
                continue
            entry = entry_from_file(path)  # loads it: a file that does not load is not adopted (and not deleted)
            if entry is not None:
                entry.sha256 = sha256_of(path)
                self.manifest.add(entry)
                cleanup.adopted.append(path.name)
        if cleanup.adopted:
            self.save_manifest()
        return cleanup
