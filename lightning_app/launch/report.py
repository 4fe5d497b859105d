"""``launch --status``: every session of a chain, and whether the next one is queued, running, paused, or the work
finished.

Read from the chain's status (``OWNER/SLUG-chain``), the stop file (``OWNER/SLUG-stop``) and Kaggle's status of
the kernel's recent versions; a version that ran and left no record (killed by the platform, or started without
credentials) is shown as Kaggle tells it. Exit status: 0 finished, 3 in progress or paused, 2 for an unknown kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from lightning_app.errors import ConfigError
from lightning_app.launch.chain import ChainState, ChainStore, SessionRecord
from lightning_app.launch.decision import FINISHED, PUSHED, QUOTA, STOPPED, utc
from lightning_app.launch.kernel_session import missing_credentials_step, unrecorded_ending
from lightning_app.launch.plan import chain_datasets
from lightning_app.launch.retries import retried
from lightning_app.persistence.kaggle.kernels import ACTIVE, ENDED, KaggleKernels

#: Versions after the newest record whose status is asked.
LOOK_AHEAD_VERSIONS = 10


@dataclass(frozen=True)
class ChainReport:
    """What ``launch --status`` prints, and its exit status."""

    lines: list[str]
    exit_code: int


def chain_report(kernel: str, say: Callable[[str], None] = print) -> ChainReport:
    """Read the chain of ``kernel`` (``OWNER/SLUG``) and say how it stands."""
    datasets = chain_datasets(kernel)
    store = ChainStore(datasets["chain"], datasets["stop"])
    kernels = KaggleKernels(kernel)
    read = retried(store.read, "reading the chain's status", say)
    chain, stop = read.chain or ChainState(kernel), read.stop
    newest = max((r.version for r in chain.sessions), default=0)
    open_records = [r.version for r in chain.sessions if not r.ended]
    asked = tuple(sorted({*open_records, *range(newest + 1, newest + 1 + LOOK_AHEAD_VERSIONS)}))
    state = retried(lambda: kernels.state(versions=asked), "kernel state", say)
    if not state.exists:
        raise ConfigError(f"--kernel: got {kernel!r}; no such kernel of the logged-in user on Kaggle")
    sessions = _sessions(chain, state.versions, state.current_version or 0)
    lines = [f"Chain of {kernel} ({kernels.url})" + (f": {chain.command}" if chain.command else "")]
    if chain.checkpoints:
        lines.append(f"Checkpoints: {chain.checkpoints}")
    if sessions:
        lines += _table([_row(session) for session in sessions])
    if stop is not None and (chain.launched_at is None or stop.applies_to(chain.launched_at)):
        lines.append(f"A stop was asked at {utc(stop.requested_at)} (launch --stop): no session pushes another.")
    summary, code = _summary(kernel, chain, sessions, state.current_version)
    return ChainReport([*lines, summary], code)


@dataclass(frozen=True)
class _Session:
    """A version of the kernel that was to run: its record (None: it left none), and Kaggle's status of it."""

    version: int
    record: SessionRecord | None
    status: str | None = None
    message: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE and (self.record is None or not self.record.ended)

    @property
    def ending(self) -> str:
        """How it ended (its record's words, or Kaggle's status of a session that never recorded its end)."""
        if self.record is not None and self.record.ended:
            return self.record.ended
        if self.active:
            return "queued" if self.status == "QUEUED" else "running"
        started = self.record is not None and self.record.start is not None
        return unrecorded_ending(self.status or "?", self.message, started)


def _sessions(chain: ChainState, statuses: dict[int, tuple[str, str]], current: int) -> list[_Session]:
    sessions = {r.version: _Session(r.version, r, *statuses.get(r.version, (None, ""))) for r in chain.sessions}
    for number, (status, message) in statuses.items():
        if number not in sessions and number <= current and status in (*ACTIVE, *ENDED):
            sessions[number] = _Session(number, None, status, message)
    return [sessions[n] for n in sorted(sessions)]


def _summary(kernel: str, chain: ChainState, sessions: list[_Session], current: int | None) -> tuple[str, int]:
    go_on = chain.launch_command or f"python -m lightning_app launch --kernel {kernel} -- fit|sweep ..."
    active = [s for s in sessions if s.active]
    if active:
        return f"Now: version {active[-1].version} is {active[-1].ending} ({active[-1].status}).", 3
    if not sessions:
        never = "only saved, never run" if current else "never run"
        return f"No session has run yet ({never}). To start one: {go_on}", 3
    newest = sessions[-1]
    record = newest.record
    if record is None or not record.ended:
        if not any(s.record is not None and s.record.start is not None for s in sessions):
            return (
                f"Stopped: version {newest.version} {newest.ending}, and no session of this chain has ever started "
                f"its command: most likely the kernel has no Kaggle credentials. To do: "
                f"{missing_credentials_step(kernel)}.",
                3,
            )
        return f"Stopped: version {newest.version} {newest.ending} (the platform ended it?). To go on: {go_on}", 3
    if record.decided == FINISHED:
        where = f" ({chain.checkpoints} version {record.dataset_version})" if record.dataset_version else ""
        return f"Finished: step {record.step} of {record.total_steps}{where}.", 0
    if record.decided == QUOTA:
        return f"Paused for quota: {record.decision}. To go on: {go_on}", 3
    if record.decided == STOPPED:
        return f"Stopped: {record.decision}. To go on: {go_on}", 3
    if record.decided == PUSHED:
        return f"Now: version {record.next_version} was pushed; Kaggle does not show it yet.", 3
    what = record.decision or record.ended
    return f"Stopped: version {record.version}: {what}. To go on: {go_on}", 3


def _row(session: _Session) -> tuple[str, ...]:
    record = session.record or SessionRecord(session.version)
    step = f"{record.step}/{record.total_steps}" if record.step is not None and record.total_steps else ""
    step = step or (str(record.step) if record.step is not None else "-")
    return (
        str(session.version),
        _clock(record.start),
        _clock(record.end),
        session.ending,
        step,
        f"v{record.dataset_version}" if record.dataset_version is not None else "-",
        record.decision or "-",
    )


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    header = ("version", "started", "ended", "how it ended", "step", "dataset", "decision")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1]
        for row in (header, *rows)
    ]


def _clock(epoch: float | None) -> str:
    return f"{datetime.fromtimestamp(epoch, timezone.utc):%m-%d %H:%M:%S}" if epoch else "-"
