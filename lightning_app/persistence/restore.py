"""The restore hook: find the newest good checkpoint (local, attached input, remote) and make it local.

Runs before ``Trainer.fit(ckpt_path=...)``. Inputs under ``/kaggle/input`` are read-only and never written:
the chosen file is copied into the writable checkpoint folder and its manifest entry merged there.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from lightning_app.atomic import atomic_file
from lightning_app.errors import ConfigError
from lightning_app.persistence.candidates import (
    Candidate,
    first_verified,
    newest_first,
    run_label,
    runs_newest_first,
    scan_folder,
    scan_tree,
    verify,
)
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
        run: continue this run (its id, as ``python -m lightning_app checkpoints`` shows it) instead of the one
            checkpointed most recently.
    """

    input_dir: str = "/kaggle/input"
    download: bool = True
    version: int | None = None
    run: str | None = None


@dataclass
class Inventory:
    """Everything ``--resume`` can see, the one it would choose, and the other runs it would leave alone."""

    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    left_alone: list[list[Candidate]] = field(default_factory=list)  # other runs, each newest first


def collect(
    checkpoint_dir: Path,
    options: RestoreOptions,
    store: CheckpointStore | None = None,
    download_dir: Path | None = None,
    settings: dict[str, object] | None = None,
) -> Inventory:
    """All candidates from the three sources (remote files are downloaded into ``download_dir`` when needed), and
    the choice among those made for ``settings`` (any architecture when None): see `choose`."""
    inventory = Inventory()
    inventory.candidates += scan_folder(checkpoint_dir, "local") if checkpoint_dir.is_dir() else []
    input_dir = Path(options.input_dir)
    if input_dir.resolve() != checkpoint_dir.resolve():
        inventory.candidates += scan_tree(input_dir, "input")
    if store is not None and options.download and download_dir is not None:
        try:
            inventory.candidates += _remote_candidates(store, options.version, inventory.candidates, download_dir)
        except StoreError as error:
            log.warning(f"Could not look at {store.description} ({error}); using local and attached checkpoints")
    inventory.chosen, inventory.left_alone = choose(inventory.candidates, settings, options.run)
    return inventory


def choose(
    candidates: list[Candidate], settings: dict[str, object] | None, run_id: str | None = None
) -> tuple[Candidate | None, list[list[Candidate]]]:
    """The newest verified checkpoint of the run checkpointed most recently (of run ``run_id`` when given), among
    the candidates made for ``settings``; and the other runs, left alone."""
    matching = [c for c in candidates if settings is None or not settings_mismatch(c.entry.settings, settings)]
    runs = runs_newest_first(matching)
    if run_id is not None:
        picked = [run for run in runs if run[0].entry.run_id == run_id]
        if not picked:
            seen = ", ".join(sorted({c.entry.run_id or "(none)" for c in matching})) or "none"
            raise ConfigError(f"--restore.run: got {run_id!r}; expected one of the runs found: {seen}")
        runs = picked + [run for run in runs if run is not picked[0]]
    for index, run in enumerate(runs):
        chosen = first_verified(run)
        if chosen is not None or run_id is not None:
            return chosen, runs[:index] + runs[index + 1 :]
    return None, runs


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
        with atomic_file(target) as copy, open(candidate.path, "rb") as source:
            shutil.copyfileobj(source, copy, length=1 << 24)
    manifest = Manifest.load(checkpoint_dir) or Manifest()
    manifest.add(candidate.entry)
    manifest.save(checkpoint_dir)
    return target


def _same_file(path: Path, entry: CheckpointEntry) -> bool:
    probe = Candidate("local", path, entry, in_manifest=bool(entry.sha256))
    return verify(probe) is None


#: How long a process waits for another one restoring into the same folder (a download of a large checkpoint).
LOCK_TIMEOUT_S = 1800.0


@contextlib.contextmanager
def folder_lock(folder: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on ``folder`` shared by the processes of one machine, waited for at most ``timeout`` s."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".restore.lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise ConfigError(
            f"--resume: another process has been restoring into {folder} for {timeout:.0f} s; if none is running, "
            f"delete {lock.lock_file}"
        ) from None
    try:
        yield
    finally:
        lock.release()


def restore_newest(
    checkpoint_dir: Path, options: RestoreOptions, store: CheckpointStore | None, settings: dict[str, object]
) -> tuple[Candidate, Path] | None:
    """Find the newest checkpoint that verifies, refuse one for another model, and copy it into ``checkpoint_dir``.

    Returns the candidate and its local path, or None when there is nothing to resume. Runs under a lock on the
    checkpoint folder: processes that start together on one machine (torchrun, SLURM) take turns, and after the
    first one has copied or downloaded, the others find its local copy and download nothing.
    """
    with folder_lock(checkpoint_dir):
        inventory = collect(checkpoint_dir, options, store, checkpoint_dir / ".remote", settings)
        chosen = inventory.chosen
        if chosen is None:
            if inventory.candidates and not any(inventory.left_alone):  # there were checkpoints, none for this model
                check_settings(newest_first(inventory.candidates)[0], settings)
            return None
        for run in inventory.left_alone:
            log.info(
                f"Left alone: {run_label(run[0].entry.run_id)}, newest {run[0].describe()} in {run[0].path.parent}"
            )
        try:
            return chosen, make_local(chosen, checkpoint_dir)
        finally:
            shutil.rmtree(checkpoint_dir / ".remote", ignore_errors=True)


def explain(candidate: Candidate) -> str:
    """``Resuming from kaggle_epoch_7_...ckpt (epoch 7, step 5600) found in /kaggle/input/...: run 3f2a9c01d4e5``."""
    where = f"downloaded from {candidate.origin}" if candidate.origin else f"found in {candidate.path.parent}"
    return f"Resuming from {candidate.describe()} {where}: {run_label(candidate.entry.run_id)}"


__all__ = [
    "Inventory",
    "RestoreOptions",
    "check_settings",
    "choose",
    "collect",
    "explain",
    "folder_lock",
    "make_local",
    "newest_first",
    "restore_newest",
]
