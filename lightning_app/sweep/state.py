"""Where each trial stands, learned where ``fit --resume`` looks: its folder, the attached inputs, its dataset.

"How far" has one answer: the manifest entries' ``global_step`` against ``total_steps`` (the step the run's schedule
ends at, written by ``fit`` into every entry). A trial is finished when an entry with ``global_step ==
total_steps`` exists: published in its dataset, or, without a dataset (or in this session's folder), local. The
sweep writes nothing of its own: what it reads here is what the next ``--resume`` will read.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.persistence.folder import MANIFEST_NAME, read_manifest
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.retry import retry_call
from lightning_app.persistence.store import CheckpointStore, NotFoundError, StoreError


@dataclass
class TrialState:
    """What the checkpoints of one trial say.

    Attributes:
        newest: the newest checkpoint entry found anywhere (None: the trial has not begun).
        finished: an entry at the schedule's end exists.
        published: the newest entry of the dataset's newest version, and that version's number.
        unreadable: why the dataset could not be read (None when it could, or there is none).
        sources: where entries were found (``local``, ``input``, ``v7``: the dataset's version).
    """

    newest: CheckpointEntry | None = None
    finished: bool = False
    published: tuple[CheckpointEntry, int] | None = None
    unreadable: str | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.newest.global_step if self.newest is not None else 0

    @property
    def total(self) -> int | None:
        return self.newest.total_steps if self.newest is not None and self.newest.total_steps else None

    @property
    def run_id(self) -> str:
        return self.newest.run_id if self.newest is not None else ""

    def describe(self) -> str:
        """``finished``, ``in progress``, ``not started``, or the dataset's problem."""
        if self.finished:
            return "finished"
        if self.unreadable is not None:
            return f"unknown: {self.unreadable}"
        return "in progress" if self.newest is not None else "not started"


def _newest(entries: list[CheckpointEntry]) -> CheckpointEntry | None:
    return max(entries, key=lambda e: e.order_key, default=None)


def attached_folders(inputs: Path, slug: str) -> list[Path]:
    """Where Kaggle mounts the trial's dataset when it is attached: ``<inputs>/<slug>/`` or
    ``<inputs>/datasets/<owner>/<slug>/``; the trial's ``fit --resume`` looks there and nowhere else in ``inputs``."""
    if not inputs.is_dir():
        return []
    return [folder for folder in [inputs / slug, *sorted((inputs / "datasets").glob(f"*/{slug}"))] if folder.is_dir()]


def attached_manifests(inputs: Path, slug: str) -> list[Manifest]:
    """The manifests of the trial's dataset where it is attached (`attached_folders`)."""
    return [m for folder in attached_folders(inputs, slug) if (m := read_manifest(folder)) is not None]


def read_published(store: CheckpointStore, timeout: float) -> tuple[Manifest, int] | None:
    """The manifest of ``store``'s newest version and its number; None when nothing is published yet. Every call
    through the one retry policy, bounded by ``timeout`` seconds; raises `StoreError` when it still fails."""
    deadline = time.monotonic() + timeout
    try:
        listing = retry_call(
            lambda: store.read_version(texts=(MANIFEST_NAME,)),
            attempts=1_000_000,
            base_delay=1.0,
            max_delay=30.0,
            deadline=deadline,
        )
    except NotFoundError:
        return None
    text = listing.texts.get(MANIFEST_NAME)
    return (Manifest.from_json(text) if text else Manifest()), listing.number


def read_state(folder: Path, inputs: Path, slug: str, store: CheckpointStore | None, timeout: float) -> TrialState:
    """One trial's state from its folder, the inputs and its dataset (see the module's docstring)."""
    state = TrialState()
    entries: list[CheckpointEntry] = []
    if (local := read_manifest(folder)) is not None and local.entries:
        entries += local.entries.values()
        state.sources.append("local")
    for manifest in attached_manifests(inputs, slug):
        entries += manifest.entries.values()
        state.sources.append("input")
    if store is not None:
        try:
            published = read_published(store, timeout)
        except StoreError as error:
            state.unreadable = str(error)
            published = None
        if published is not None and (newest := _newest(list(published[0].entries.values()))) is not None:
            state.published = (newest, published[1])
            entries += published[0].entries.values()
            state.sources.append(f"v{published[1]}")
    state.newest = _newest(entries)
    state.finished = any(e.is_final for e in entries)
    return state


def read_states(jobs: dict[str, tuple[Path, Path, str, CheckpointStore | None]], timeout: float) -> dict:
    """`read_state` for several trials at once (each dataset read is a child process): name -> `TrialState`."""
    if not jobs:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        futures = {name: pool.submit(read_state, *job, timeout) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}
