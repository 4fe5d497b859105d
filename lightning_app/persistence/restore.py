"""``--resume``: which checkpoint a ``fit`` continues from, found where a new session can see it, and made local.

Where it looks: the local checkpoint folder, every attached input under ``--restore.input_dir`` (read-only, never
written), and the run's dataset through its store. What it takes: among the checkpoints made for this model, the
run checkpointed most recently (or ``--restore.run``), its newest checkpoint that verifies against its manifest.

The dataset is read the way a flaky service needs: every call through the one retry policy, the whole look bounded
by ``--restore.timeout``. From the newest version it reads the manifest (one call) and downloads only the checkpoint
it takes, onto the checkpoint folder's disk, then moves it into the folder. When the newest version holds no
checkpoint that verifies, up to ``--restore.versions_back`` older versions are read, newest first.

When the dataset could not be read (still failing at the end of the bound, credentials refused) and nothing here
verifies, ``--resume`` refuses to start fresh (`ResumeBlocked`, one line, exit 2): a fresh run would publish over
the real one. A dataset that does not exist yet (the first session) or no credentials at all start fresh, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from lightning_app.durations import parse_duration
from lightning_app.errors import ConfigError, bad_value
from lightning_app.persistence.folder import (
    CHECKPOINT_GLOB,
    MANIFEST_NAME,
    REMOTE_DIR,
    Candidate,
    CheckpointFolder,
    candidates_in,
    candidates_under,
    disk_full_line,
    entry_from_file,
    free_bytes,
    parse_checkpoint_name,
    verify,
)
from lightning_app.persistence.history import HISTORY_NAME, read_history
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.retry import retry_call
from lightning_app.persistence.store import (
    CheckpointStore,
    NoSpaceError,
    NotFoundError,
    StoreError,
    VersionContents,
)
from lightning_app.persistence.sync_target import StoreChoice
from lightning_app.session import kaggle_input_dir

log = logging.getLogger("lightning_app.restore")

#: Set by the process that resolved ``--resume``, read by the DDP processes Lightning launches from it.
RESUME_ENV = "LIGHTNING_APP_RESUME_FROM"
#: How long a process waits for another one restoring into the same folder (a download of a large checkpoint).
LOCK_TIMEOUT_S = 1800.0


@dataclass
class RestoreOptions:
    """Where ``--resume`` looks besides the local checkpoint folder.

    Args:
        input_dir: attached datasets, searched recursively (``<input>/<slug>/`` and
            ``<input>/datasets/<owner>/<slug>/``); read-only, never written. Default: Kaggle's ``/kaggle/input``.
        download: also read the run's dataset through the API (when credentials are found).
        version: read this dataset version only (no fallback to older ones).
        run: continue this run (its id, as ``python -m lightning_app checkpoints`` shows it) instead of the one
            checkpointed most recently.
        versions_back: when the newest version holds no checkpoint that verifies, read up to this many older ones.
        timeout: the longest the dataset is read for, every retry included (``00:05:00``, ``90s``).
    """

    input_dir: str | None = None
    download: bool = True
    version: int | None = None
    run: str | None = None
    versions_back: int = 5
    timeout: str = "00:05:00"

    def __post_init__(self) -> None:
        if self.version is not None and self.version < 1:
            raise bad_value("--restore.version", self.version, "a version number >= 1")
        if self.versions_back < 0:
            raise bad_value("--restore.versions_back", self.versions_back, "an integer >= 0")
        self.timeout_seconds = parse_duration("--restore.timeout", self.timeout).total_seconds()
        #: Where attached datasets are searched: ``input_dir``, or Kaggle's input folder.
        self.inputs = Path(self.input_dir) if self.input_dir else kaggle_input_dir()


class ResumeBlocked(ConfigError):
    """``--resume`` found nothing here and could not read the dataset: starting fresh would throw the run away."""


@dataclass
class RemoteLook:
    """What reading the run's dataset gave.

    Attributes:
        store: the store's description (``kaggle:owner/slug``).
        unreadable: the last error when the dataset could not be read; None when it could.
        missing: the dataset does not exist (yet).
        versions: the version numbers read, newest first.
    """

    store: str
    unreadable: str | None = None
    missing: bool = False
    versions: list[int] = field(default_factory=list)


@dataclass
class Inventory:
    """Everything ``--resume`` can see, the one it would choose, and the other runs it would leave alone."""

    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    left_alone: list[list[Candidate]] = field(default_factory=list)  # other runs, each newest first
    remote: RemoteLook | None = None


# -- choosing -------------------------------------------------------------------------------------------------


def settings_mismatch(saved: dict[str, object], requested: dict[str, object]) -> str | None:
    """The first setting that differs, as ``"pe_type: checkpoint has 'rope', this run asks for 'alibi'"``."""
    for key in sorted(set(saved) | set(requested)):
        if key in saved and key in requested and saved[key] != requested[key]:
            return f"{key}: checkpoint has {saved[key]!r}, this run asks for {requested[key]!r}"
    return None


def newest_first(candidates: list[Candidate]) -> list[Candidate]:
    """Most recently written first (see `CheckpointEntry.order_key`); a local copy wins a tie with the same file
    elsewhere."""
    preference = {"local": 2, "input": 1, "remote": 0}
    return sorted(candidates, key=lambda c: (c.order_key, preference.get(c.source, 0)), reverse=True)


def first_verified(candidates: list[Candidate]) -> Candidate | None:
    """The newest candidate that verifies; each one that fails is reported and the next newest tried."""
    for candidate in newest_first(candidates):
        if candidate.verified is None:
            try:
                if candidate.fetch is not None and not candidate.path.is_file():
                    candidate.fetch()
                candidate.problem = verify(candidate) or ""
            except StoreError as error:
                candidate.problem = f"could not be downloaded ({error})"
            candidate.verified = not candidate.problem
            if candidate.verified and not candidate.in_manifest and candidate.source == "remote":
                candidate.entry = entry_from_file(candidate.path) or candidate.entry
                candidate.order_key = candidate.entry.order_key
            if not candidate.verified:
                where = f"{candidate.path.name} of {candidate.origin}" if candidate.origin else str(candidate.path)
                log.warning(f"Skipping {where}: {candidate.problem}; trying the next newest checkpoint")
        if candidate.verified:
            return candidate
    return None


def runs_newest_first(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by run, the run checkpointed most recently first; each run's own newest first."""
    runs: dict[str, list[Candidate]] = {}
    for candidate in newest_first(candidates):
        runs.setdefault(candidate.entry.run_id, []).append(candidate)
    return list(runs.values())  # dicts keep insertion order: each run's newest decides its place


def run_label(run_id: str) -> str:
    return f"run {run_id}" if run_id else "a run from before run ids"


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


# -- the dataset ----------------------------------------------------------------------------------------------


class _Dataset:
    """The run's dataset, read version by version (newest first), every call retried within one deadline."""

    def __init__(self, store: CheckpointStore, options: RestoreOptions, download_dir: Path) -> None:
        self.store, self.options, self.download_dir = store, options, download_dir
        self.look = RemoteLook(store.description)
        self.deadline = time.monotonic() + options.timeout_seconds
        self._next: int | None = options.version  # None: the newest
        self._left = 0 if options.version is not None else options.versions_back + 1
        self.last: list[Candidate] = []
        self.last_copies: set[tuple[str, str]] = set()  # checkpoints of the last version already here (attached)

    def _call(self, fn: Callable[[], object]) -> object:
        return retry_call(fn, attempts=1_000_000, base_delay=1.0, max_delay=30.0, deadline=self.deadline)

    def read_next(self, known: list[Candidate]) -> bool:
        """Add the next older version's candidates to ``known`` (the newest first); False when there is none to
        read, or the dataset cannot be read."""
        while self._left > 0 and self.look.unreadable is None:
            self._left -= 1
            version = self._next
            try:
                listing = self._call(lambda v=version: self.store.read_version(v, texts=(MANIFEST_NAME, HISTORY_NAME)))
            except NotFoundError as error:
                if version is None:
                    self.look.missing = True
                    return False
                log.info(f"{self.store.description} version {version} cannot be read ({error}); trying the one before")
                self._next = version - 1 if version > 1 else None
                self._left = self._left if version > 1 else 0
                continue
            except StoreError as error:
                self.look.unreadable = str(error)
                return False
            self.look.versions.append(listing.number)
            self._next = listing.number - 1 if listing.number and listing.number > 1 else None
            if self._next is None:
                self._left = 0
            self.last_copies = set()
            self.last = self._candidates(listing, known)
            known += self.last
            return True
        return False

    def _candidates(self, listing: VersionContents, known: list[Candidate]) -> list[Candidate]:
        have = {(c.path.name, c.entry.sha256) for c in known if c.source != "remote"}
        names = {f.name for f in listing.files}
        text = listing.texts.get(MANIFEST_NAME)
        manifest = Manifest.from_json(text) if text else Manifest()
        origin = f"{self.store.description} (version {listing.number})"
        history = listing.texts.get(HISTORY_NAME)
        if history is None and HISTORY_NAME in names:
            log.warning(f"The metric history in {origin} is too large to read with the manifest: not restored")
        found = []
        for name in sorted(n for n in names if parse_checkpoint_name(n)):
            entry = manifest.entries.get(name)
            in_manifest = entry is not None
            if entry is None:  # a version without its manifest: the step is read once the file is fetched
                epoch, timestamp = parse_checkpoint_name(name)
                entry = CheckpointEntry(name, epoch, -1, timestamp)
            if (name, entry.sha256) in have and in_manifest:
                self.last_copies.add((name, entry.sha256))
                continue  # the same file is here already
            path = self.download_dir / f"v{listing.number}" / name
            candidate = Candidate("remote", path, entry, in_manifest, origin=origin)
            candidate.fetch = self._fetcher(name, path, listing.number, entry.size)
            candidate.history = history
            found.append(candidate)
        return found

    def _fetcher(self, name: str, path: Path, version: int, size: int) -> Callable[[], None]:
        def fetch() -> None:
            check_room(self.download_dir, size)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._call(lambda: self.store.fetch_file(name, path.parent, version, size or None))
            except NoSpaceError:
                raise ConfigError(disk_full_line(self.download_dir, free_bytes(self.download_dir), size)) from None
            except NotFoundError:
                raise
            except StoreError as error:
                self.look.unreadable = str(error)
                raise

        return fetch

    def should_go_back(self, chosen: Candidate | None) -> bool:
        """Read an older version when none of the last one's checkpoints verifies: each was tried and failed (a
        candidate never tried is older than the choice, or of another run), or it held none."""
        if chosen is not None and chosen.source == "remote":
            return False
        if not self.look.versions or self.look.missing:  # nothing read: the dataset does not exist (yet)
            return False
        if chosen is not None and (chosen.path.name, chosen.entry.sha256) in self.last_copies:
            return False  # the version's checkpoint is the one chosen, found attached or local
        return all(c.verified is False for c in self.last) and self._left > 0 and self.look.unreadable is None


def check_room(folder: Path, needed: int) -> None:
    """Refuse in one line, before a download or a copy, when ``folder``'s disk has less than ``needed`` bytes."""
    free = free_bytes(folder)
    if needed and free < needed:
        raise ConfigError(disk_full_line(folder, free, needed) + ": the checkpoint to resume from does not fit")


def collect(
    checkpoint_dir: Path,
    options: RestoreOptions,
    store: StoreChoice | CheckpointStore | None = None,
    download_dir: Path | None = None,
    settings: dict[str, object] | None = None,
) -> Inventory:
    """Everything ``--resume`` can see and the choice among the checkpoints made for ``settings`` (any
    architecture when None): see `choose`. The dataset's checkpoints are downloaded into ``download_dir`` (default
    ``<checkpoint_dir>/.remote``) only when one is the choice (or is tried)."""
    if isinstance(store, CheckpointStore):
        store = StoreChoice(store, dataset=store.name)
    inventory = Inventory()
    inventory.candidates += candidates_in(checkpoint_dir, "local") if checkpoint_dir.is_dir() else []
    inputs = options.inputs
    if not inputs.resolve().is_relative_to(checkpoint_dir.resolve()) and inputs.resolve() != checkpoint_dir.resolve():
        inventory.candidates += candidates_under(inputs, "input")
    dataset = None
    if store is not None and options.download:
        if store.store is not None:
            dataset = _Dataset(store.store, options, download_dir or checkpoint_dir / REMOTE_DIR)
            inventory.remote = dataset.look
            dataset.read_next(inventory.candidates)
        elif store.error is not None:
            inventory.remote = RemoteLook(f"kaggle:{store.dataset}", unreadable=store.why_none)
    while True:
        inventory.chosen, inventory.left_alone = choose(inventory.candidates, settings, options.run)
        if dataset is None or not dataset.should_go_back(inventory.chosen):
            break
        skipped = "; ".join(f"{c.path.name}: {c.problem}" for c in dataset.last) or "it holds none"
        version = f"{dataset.store.description} version {dataset.look.versions[-1]}"
        log.warning(f"{version} holds no checkpoint that verifies ({skipped}); reading the version before it")
        if not dataset.read_next(inventory.candidates):
            inventory.chosen, inventory.left_alone = choose(inventory.candidates, settings, options.run)
            break
    return inventory


def check_settings(candidate: Candidate, requested: dict[str, object]) -> None:
    """Refuse, in one line, a checkpoint made for a different model."""
    problem = settings_mismatch(candidate.entry.settings, requested)
    if problem:
        raise ConfigError(f"--resume: {candidate.path.name} was made for another model ({problem})")


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


def explain(candidate: Candidate) -> str:
    """``Resuming from kaggle_epoch_7_...ckpt (epoch 7, step 5600) found in /kaggle/input/...: run 3f2a9c01d4e5``."""
    where = f"downloaded from {candidate.origin}" if candidate.origin else f"found in {candidate.path.parent}"
    return f"Resuming from {candidate.describe()} {where}: {run_label(candidate.entry.run_id)}"


def blocked_line(look: RemoteLook) -> str:
    """The one line of `ResumeBlocked`."""
    return (
        f"--resume: could not read {look.store} ({look.unreadable}) and no checkpoint here verifies; "
        "try again later, or attach the dataset with Add Data, or pass --restore.download false to use only what is "
        "local or attached, or leave out --resume to start a new run"
    )


def history_beside(candidate: Candidate) -> str | None:
    """The run's metric history published with ``candidate``: the ``metrics.csv`` of its dataset version, or the
    one beside it (an attached version, a downloaded one); None when there is none (a checkpoint of the local
    folder: its run's log folder holds the history)."""
    if candidate.source == "remote":
        return candidate.history  # read with its version's manifest
    return read_history(candidate.path.parent / HISTORY_NAME)


def restore_newest(
    checkpoint_dir: Path,
    options: RestoreOptions,
    store: StoreChoice | CheckpointStore | None,
    settings: dict[str, object],
) -> tuple[Candidate, Path] | None:
    """Find the newest checkpoint that verifies, refuse one for another model, and make it local.

    Returns the candidate and its local path, or None when there is nothing to resume; raises `ResumeBlocked`
    when nothing here verifies and the dataset could not be read. Runs under a lock on the checkpoint folder:
    processes that start together on one machine (torchrun, SLURM) take turns, and after the first one has
    copied or downloaded, the others find its local copy and download nothing. The candidate's ``history`` is the
    metric history published with it (`history_beside`), read before the folder's downloads are removed.
    """
    with folder_lock(checkpoint_dir):
        try:
            inventory = collect(checkpoint_dir, options, store, settings=settings)
            chosen, look = inventory.chosen, inventory.remote
            if chosen is None:
                if look is not None and look.unreadable is not None:
                    raise ResumeBlocked(blocked_line(look))
                if inventory.candidates and not any(inventory.left_alone):  # checkpoints, none for this model
                    check_settings(newest_first(inventory.candidates)[0], settings)
                _say_why_fresh(look, store if isinstance(store, StoreChoice) else None)
                return None
            if look is not None and look.unreadable is not None and chosen.source != "remote":
                log.warning(
                    f"Could not read {look.store} ({look.unreadable}): a newer checkpoint may exist there; "
                    f"continuing from {chosen.describe()}, the newest here"
                )
            for run in inventory.left_alone:
                log.info(
                    f"Left alone: {run_label(run[0].entry.run_id)}, newest {run[0].describe()} in "
                    f"{run[0].origin or run[0].path.parent}"
                )
            chosen.history = history_beside(chosen)
            try:
                return chosen, CheckpointFolder(checkpoint_dir).adopt(chosen)
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    free = shutil.disk_usage(checkpoint_dir).free
                    raise ConfigError(disk_full_line(checkpoint_dir, free, chosen.entry.size)) from None
                raise
        finally:
            shutil.rmtree(checkpoint_dir / REMOTE_DIR, ignore_errors=True)


def _say_why_fresh(look: RemoteLook | None, store: StoreChoice | None) -> None:
    if look is not None and look.missing:
        log.info(f"No checkpoint found to resume from ({look.store} does not exist yet): starting fresh")
    elif store is not None and store.store is None and store.why_none:
        log.info(f"No checkpoint found to resume from, and no dataset was looked at ({store.why_none}): starting fresh")
    else:
        log.info("No checkpoint found to resume from: starting fresh")


def resolve_resume(
    resume: str | None,
    folder: Path,
    options: RestoreOptions,
    settings: dict[str, object],
    store: Callable[[], StoreChoice | None],
    on_resume: Callable[[Candidate], None] | None = None,
) -> str | None:
    """The local checkpoint path to resume from, or None to start fresh.

    Args:
        resume: ``--resume``: None (start fresh), ``"auto"`` (the newest run's newest good checkpoint, from the
            local folder, the inputs or the dataset: see `restore_newest`) or a checkpoint file.
        folder: the writable checkpoint folder the chosen file is made local in.
        options: ``--restore.*``.
        settings: the requested architecture; a checkpoint made for another is refused in one line.
        store: makes the run's store (see `make_store`), called only when the dataset is to be read.
        on_resume: called with the checkpoint chosen (its ``history``: the metric history published with it, or
            None), in the process that resolved it.
    """
    if resume is None:
        if any(folder.glob(CHECKPOINT_GLOB)):
            log.info(f"Starting fresh: checkpoints in {folder} are left alone (pass --resume to continue)")
        return None
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and RESUME_ENV in os.environ:
        return os.environ[RESUME_ENV] or None  # a DDP process launched by the one that resolved it
    if resume == "auto":
        restored = restore_newest(folder, options, store() if options.download else None, settings)
        if restored is None:
            os.environ[RESUME_ENV] = ""
            return None
        chosen, local = restored
    else:
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume: got {resume!r}; expected an existing checkpoint file, or no value")
        chosen = next((c for c in candidates_in(path.parent, "local") if c.path.name == path.name), None)
        if chosen is None:
            raise ConfigError(f"--resume: {resume!r} is not a checkpoint that loads")
        check_settings(chosen, settings)
        chosen.history = history_beside(chosen)
        local = CheckpointFolder(folder).adopt(chosen)
    log.info(explain(chosen))
    os.environ[RESUME_ENV] = str(local)
    if on_resume is not None:
        on_resume(chosen)
    return str(local)


__all__ = [
    "Inventory",
    "RestoreOptions",
    "ResumeBlocked",
    "check_settings",
    "choose",
    "collect",
    "explain",
    "folder_lock",
    "history_beside",
    "newest_first",
    "resolve_resume",
    "restore_newest",
]
