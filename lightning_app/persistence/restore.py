"""The restore hook: find the newest good checkpoint (local, attached input, remote) and make it local.

Runs before ``Trainer.fit(ckpt_path=...)``. Inputs under ``/kaggle/input`` are read-only and never written:
the chosen file is copied into the writable checkpoint folder and its manifest entry merged there.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.errors import ConfigError
from lightning_app.persistence.candidates import Candidate, first_verified, newest_first, scan_folder, scan_tree, verify
from lightning_app.persistence.manifest import CheckpointEntry, Manifest, parse_checkpoint_name, settings_mismatch
from lightning_app.persistence.store_protocol import CheckpointStore, NotFoundError, StoreError

log = logging.getLogger("lightning_app.restore")


@dataclass
class RestoreOptions:
    """Where ``--resume`` looks besides the local checkpoint folder.

    Args:
        input_dir: attached datasets, searched recursively (``/kaggle/input/<slug>/`` and
            ``/kaggle/input/datasets/<owner>/<slug>/``); read-only, never written.
        download: also fetch the newest version of the sync dataset through the API when credentials are found.
        version: download this dataset version instead of the newest.
    """

    input_dir: str = "/kaggle/input"
    download: bool = True
    version: int | None = None


@dataclass
class Inventory:
    """Everything ``--resume`` can see, newest first, and the one it would choose."""

    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    remote_error: str | None = None


def collect(
    checkpoint_dir: Path,
    options: RestoreOptions,
    store: CheckpointStore | None = None,
    download_dir: Path | None = None,
) -> Inventory:
    """All candidates from the three sources; remote files are downloaded into ``download_dir`` when needed."""
    inventory = Inventory()
    inventory.candidates += scan_folder(checkpoint_dir, "local") if checkpoint_dir.is_dir() else []
    input_dir = Path(options.input_dir)
    if input_dir.resolve() != checkpoint_dir.resolve():
        inventory.candidates += scan_tree(input_dir, "input")
    if store is not None and options.download and download_dir is not None:
        try:
            inventory.candidates += _remote_candidates(store, options.version, inventory.candidates, download_dir)
        except StoreError as error:
            inventory.remote_error = f"{store.description}: {error}"
            log.warning(f"Could not look at {store.description} ({error}); using local and attached checkpoints")
    inventory.chosen = first_verified(inventory.candidates)
    return inventory


def _remote_candidates(
    store: CheckpointStore, version: int | None, known: list[Candidate], download_dir: Path
) -> list[Candidate]:
    try:
        names = [f.name for f in store.list_files(version) if parse_checkpoint_name(f.name)]
    except NotFoundError:
        return []
    known_names = {c.path.name for c in known}
    if names and all(name in known_names for name in names):
        return []  # the newest version holds nothing that is not here already
    target = download_dir / f"version-{version or 'latest'}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    store.fetch(target, version)
    found = scan_tree(target, "remote")
    for candidate in found:
        candidate.origin = f"{store.description} ({f'version {version}' if version else 'newest version'})"
    return found


def check_settings(candidate: Candidate, requested: dict[str, object]) -> None:
    """Refuse, in one line, a checkpoint made for a different model."""
    problem = settings_mismatch(candidate.entry.settings, requested)
    if problem:
        raise ConfigError(f"--resume: {candidate.path.name} was made for another model ({problem})")


def make_local(candidate: Candidate, checkpoint_dir: Path) -> Path:
    """Copy ``candidate`` into ``checkpoint_dir`` (atomically) and merge its manifest entry; returns the copy."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoint_dir / candidate.path.name
    if candidate.path.resolve() == target.resolve():
        return target
    if not (target.is_file() and _same_file(target, candidate.entry)):
        with (
            tempfile.NamedTemporaryFile(dir=checkpoint_dir, prefix=f".{target.name}.", delete=False) as tmp,
            open(candidate.path, "rb") as source,
        ):
            shutil.copyfileobj(source, tmp, length=1 << 24)
        Path(tmp.name).replace(target)
    manifest = Manifest.load(checkpoint_dir) or Manifest()
    manifest.add(candidate.entry)
    manifest.save(checkpoint_dir)
    return target


def _same_file(path: Path, entry: CheckpointEntry) -> bool:
    probe = Candidate("local", path, entry, in_manifest=bool(entry.sha256))
    return verify(probe) is None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` shared by the processes of one machine (``flock``; none where missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".restore.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def restore_newest(
    checkpoint_dir: Path, options: RestoreOptions, store: CheckpointStore | None, settings: dict[str, object]
) -> tuple[Candidate, Path] | None:
    """Find the newest checkpoint that verifies, refuse one for another model, and copy it into ``checkpoint_dir``.

    Returns the candidate and its local path, or None when there is nothing to resume. Runs under a lock on the
    checkpoint folder: processes that start together on one machine (torchrun, SLURM) take turns, and after the
    first one has copied or downloaded, the others find its local copy and download nothing.
    """
    with folder_lock(checkpoint_dir):
        chosen = collect(checkpoint_dir, options, store, checkpoint_dir / ".remote").chosen
        if chosen is None:
            return None
        try:
            check_settings(chosen, settings)
            return chosen, make_local(chosen, checkpoint_dir)
        finally:
            shutil.rmtree(checkpoint_dir / ".remote", ignore_errors=True)


def explain(candidate: Candidate) -> str:
    """``Resuming from kaggle_epoch_7_...ckpt (epoch 7, step 5600) found in /kaggle/input/...``."""
    if candidate.origin:
        return f"Resuming from {candidate.describe()} downloaded from {candidate.origin}"
    return f"Resuming from {candidate.describe()} found in {candidate.path.parent}"


__all__ = [
    "Inventory",
    "RestoreOptions",
    "check_settings",
    "collect",
    "explain",
    "folder_lock",
    "make_local",
    "newest_first",
    "restore_newest",
]
