"""The chain's state, readable from anywhere: ``chain.json`` in the private dataset ``OWNER/SLUG-chain``, and the
stop file ``stop.json`` in ``OWNER/SLUG-stop``.

A dataset version holds only what is published with it, so the status lives in a dataset of its own (in the run's
dataset it would push the checkpoint out of the newest version), and ``launch --stop`` writes to another one: a
session rewriting the status could otherwise drop a stop written meanwhile.

Only sessions write ``chain.json``, one at a time (a session starts training only once the previous one has
ended, and the user's ``launch`` starts nothing while one is queued or running). Each session writes its record
three times: when it starts (a session the platform kills is then told from one that could not start: no
credentials), when its command has ended (how, the step reached, the dataset version published), and with what it
decided (and the version it pushed). How a session that never recorded its end ended is told by Kaggle's status of
its version: the next session writes it down, and ``launch --status`` reads it the same way.

Reads go through one child process for every dataset at once (`read_newest`). A publish adds no version when the
newest one already holds files of the same names and sizes (a retry after a lost reply must not publish twice), so a
text of the same size as the newest one is padded with a space.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle.store import KaggleDatasetStore, read_newest
from lightning_app.persistence.store import VersionContents

CHAIN_FILE = "chain.json"
STOP_FILE = "stop.json"
FORMAT = 1


@dataclass
class SessionRecord:
    """One version of the kernel that was to run, as the chain knows it.

    Attributes:
        version: the kernel's version number.
        pushed_by: the version that pushed it; None: the user's ``launch``.
        pushed_at, start, command_start, end: epoch seconds (when pushed, when its session started, when its
            command started, when it ended).
        ended: how it ended, in a few words (``stopped, work remains``, ``finished``, ``exit 2: ...``, ``ended without
            a record (ERROR)``...).
        exit_code: the command's exit status.
        step, total_steps: the step the published checkpoint reached, and the run's last step.
        dataset_version: the run's dataset version holding that checkpoint.
        decision: what it decided, in a few words; ``decided``: ``pushed``, ``finished``, ``quota``, ``stopped``,
            ``failed``, ``none`` (machine-readable).
        next_version: the version it pushed.
        quota_refreshes_at: for a pause for quota: when the weekly quota refreshes (ISO, UTC).
        notes: anything else worth saying (a status that could not be read, checkpoints kept in the output).
    """

    version: int
    pushed_by: int | None = None
    pushed_at: float | None = None
    start: float | None = None
    command_start: float | None = None
    end: float | None = None
    ended: str = ""
    exit_code: int | None = None
    step: int | None = None
    total_steps: int | None = None
    dataset_version: int | None = None
    decision: str = ""
    decided: str = ""
    next_version: int | None = None
    quota_refreshes_at: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class ChainState:
    """Every recorded session of the chain of ``kernel``, oldest first.

    Attributes:
        kernel: ``owner/slug``.
        command: the command the chain runs (``fit ...``), as the user gave it.
        launch_command: the ``launch`` command line (how to go on after a pause).
        launched_at: when the user last ran it (epoch seconds): a ``launch --stop`` after that stops the chain.
        checkpoints: the run's dataset (a ``fit``).
        sessions: the records.
    """

    kernel: str
    command: str = ""
    launch_command: str = ""
    launched_at: float | None = None
    checkpoints: str | None = None
    sessions: list[SessionRecord] = field(default_factory=list)

    def record(self, version: int) -> SessionRecord:
        """The record of ``version`` (made, in order, when there is none)."""
        for record in self.sessions:
            if record.version == version:
                return record
        record = SessionRecord(version)
        self.sessions.append(record)
        self.sessions.sort(key=lambda r: r.version)
        return record

    def find(self, version: int) -> SessionRecord | None:
        return next((r for r in self.sessions if r.version == version), None)

    @property
    def newest(self) -> SessionRecord | None:
        return self.sessions[-1] if self.sessions else None

    def newest_step(self) -> int | None:
        """The furthest step any session recorded as published."""
        steps = [r.step for r in self.sessions if r.step is not None]
        return max(steps) if steps else None

    def to_json(self) -> str:
        data = {"format": FORMAT, **asdict(self)}
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ChainState:
        data = json.loads(text)
        sessions = [SessionRecord.from_dict(s) for s in data.get("sessions", [])]
        known = {k: data[k] for k in ("kernel", "command", "launch_command", "launched_at", "checkpoints") if k in data}
        return cls(**known, sessions=sorted(sessions, key=lambda r: r.version))


@dataclass(frozen=True)
class StopRequest:
    """``launch --stop``: no session pushes another after ``requested_at`` (until the user launches again)."""

    requested_at: float
    now: bool = False

    def applies_to(self, launched_at: float) -> bool:
        """Whether it stops a chain the user launched at ``launched_at`` (a later ``launch`` starts it again)."""
        return self.requested_at > launched_at

    @classmethod
    def from_json(cls, text: str) -> StopRequest:
        data = json.loads(text)
        return cls(float(data["requested_at"]), bool(data.get("now", False)))


@dataclass(frozen=True)
class ChainRead:
    """What `ChainStore.read` found: the status (None before the first session wrote one), the stop file (None:
    never written), and the newest version of each other dataset asked about (None: it does not exist yet)."""

    chain: ChainState | None
    stop: StopRequest | None
    others: dict[str, VersionContents | None] = field(default_factory=dict)


class ChainStore:
    """The chain's two small private datasets (one bounded child process per call).

    Args:
        chain_dataset: ``OWNER/SLUG-chain``.
        stop_dataset: ``OWNER/SLUG-stop``.
        call_timeout: seconds allowed for any one call.
    """

    def __init__(self, chain_dataset: str, stop_dataset: str, call_timeout: float = 120.0) -> None:
        self.chain = KaggleDatasetStore(chain_dataset, call_timeout=call_timeout)
        self.stop = KaggleDatasetStore(stop_dataset, call_timeout=call_timeout)
        self.call_timeout = call_timeout
        self._newest_size: dict[str, int] = {}  # the size of each file in its dataset's newest known version

    def read(self, also: dict[str, str] | None = None) -> ChainRead:
        """The newest ``chain.json`` and ``stop.json``, and the newest version of each dataset of ``also``
        (``{OWNER/SLUG: the small file whose text to read}``), in one call."""
        items = {self.chain.dataset: CHAIN_FILE, self.stop.dataset: STOP_FILE, **(also or {})}
        found = read_newest(items, self.call_timeout)
        texts = {}
        for dataset, name in ((self.chain.dataset, CHAIN_FILE), (self.stop.dataset, STOP_FILE)):
            contents = found.get(dataset)
            texts[name] = contents.texts.get(name) if contents is not None else None
            if texts[name] is not None:
                self._newest_size[name] = len(texts[name].encode())
        chain = ChainState.from_json(texts[CHAIN_FILE]) if texts[CHAIN_FILE] is not None else None
        stop = StopRequest.from_json(texts[STOP_FILE]) if texts[STOP_FILE] is not None else None
        return ChainRead(chain, stop, {dataset: found.get(dataset) for dataset in also or {}})

    def write(self, state: ChainState, notes: str) -> int | None:
        """Publish ``state`` as the newest version; its number (None while Kaggle still processes it)."""
        return self._publish_text(self.chain, CHAIN_FILE, state.to_json(), notes)

    def write_stop(self, now: bool) -> StopRequest:
        """Publish a stop requested now (the newest stop file is read first: a write must change it)."""
        self.read()
        request = StopRequest(time.time(), now)
        self._publish_text(self.stop, STOP_FILE, json.dumps(asdict(request)) + "\n", "launch --stop")
        return request

    def _publish_text(self, store: KaggleDatasetStore, name: str, text: str, notes: str) -> int | None:
        if len(text.encode()) == self._newest_size.get(name):
            text += " "  # same name, same size: the publish would take it for the version already there
        folder = Path(tempfile.mkdtemp(prefix="chain-"))
        try:
            (folder / name).write_text(text)
            number = store.publish(folder, notes).number
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._newest_size[name] = len(text.encode())
        return number
