"""The Kaggle session this process runs in: where its folders are, what kind of run it is, when it started, and how
long this run may still train.

Kaggle ends a CPU or GPU session 12 hours after it started, whatever ran before ``fit`` (an hour of notebook work,
an earlier ``fit``), and a GPU session sooner when the weekly GPU quota runs out. `SessionBudget` turns
``--deadline.budget`` into a deadline from those facts; `callbacks.deadline.SessionDeadline` acts on it.

The session's start, first source that answers:

1. ``LIGHTNING_APP_SESSION_START`` (epoch seconds): a sweep or a launched chain sets it for the ``fit`` it starts
   (`session_start_environment`); a value that is not a time in the past is refused in one line;
2. inside a Kaggle notebook: the container's first process, ``/proc/1``. Its start (``/proc/1/stat`` field 22, in
   clock ticks since boot) is read against ``CLOCK_BOOTTIME``, the clock the kernel counts those ticks on (exact to
   the tick, unlike ``btime`` in ``/proc/stat``, which is whole seconds; that is the fallback). That a Kaggle
   session starts its container, and that the container's first process starts with it, is an assumption no
   machine here can confirm: a container older than one session is therefore not taken for the session;
3. the process's own start (``/proc/self/stat`` likewise), or where ``/proc`` cannot tell, when this package was
   imported (`lightning_app.IMPORTED_AT`).

Every path under ``/kaggle`` comes from `kaggle_root` (``LIGHTNING_APP_KAGGLE_ROOT``, default ``/kaggle``), so that
a test can point it at a temporary folder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lightning_app
from lightning_app.durations import parse_duration
from lightning_app.errors import bad_value

#: Where Kaggle's folders are (``input``, ``working``): a test points this at a temporary folder.
KAGGLE_ROOT_VARIABLE = "LIGHTNING_APP_KAGGLE_ROOT"
#: The session's start, in epoch seconds, for a ``fit`` that another process started within the session.
SESSION_START_VARIABLE = "LIGHTNING_APP_SESSION_START"
#: Kaggle ends a CPU or GPU session this long after it started (a TPU session after 9 h: not a target here).
KAGGLE_SESSION_SECONDS = 12 * 3600
#: Kept back from each limit Kaggle enforces (the 12 h session, the weekly GPU quota). What it takes to stop in
#: time is measured and added by the deadline (the checkpoint and its upload times ``--deadline.safety``, a few
#: steps, ``--deadline.reserve``); this covers what nothing measures: the session's start is an estimate (the
#: container may start a little after Kaggle's clock does), the quota is read once and may lag, and a notebook may
#: still run cells after ``fit``. It is the half hour that ``11:30:00`` kept back when the budget counted from the
#: process's start; the time before the process started is now counted exactly instead.
KAGGLE_MARGIN_SECONDS = 30 * 60
#: How far in the future a ``LIGHTNING_APP_SESSION_START`` may lie (clocks of two processes on one machine agree).
_FUTURE_TOLERANCE_SECONDS = 60.0


# -- where Kaggle's folders are, and what kind of run this is -------------------------------------------------------


def kaggle_root(env: Mapping[str, str] | None = None) -> Path:
    """``/kaggle``, or the folder ``LIGHTNING_APP_KAGGLE_ROOT`` names."""
    env = os.environ if env is None else env
    return Path(env.get(KAGGLE_ROOT_VARIABLE) or "/kaggle")


def kaggle_input_dir(env: Mapping[str, str] | None = None) -> Path:
    """``/kaggle/input``: attached datasets and notebook outputs, read-only."""
    return kaggle_root(env) / "input"


def kaggle_working_dir(env: Mapping[str, str] | None = None) -> Path:
    """``/kaggle/working``: the notebook's writable output folder (about 20 GB), lost when the session ends."""
    return kaggle_root(env) / "working"


def in_kaggle_notebook(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Kaggle notebook (the platform sets ``KAGGLE_KERNEL_RUN_TYPE``)."""
    return bool(run_type(env))


def run_type(env: Mapping[str, str] | None = None) -> str | None:
    """``"Interactive"`` (the notebook editor) or ``"Batch"`` (*Save Version*, a scheduled run) inside a Kaggle
    notebook, as the platform says it; None elsewhere."""
    env = os.environ if env is None else env
    return env.get("KAGGLE_KERNEL_RUN_TYPE") or None


# -- when the session and the process started ---------------------------------------------------------------------


def _boot_clock() -> float | None:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return None if clock is None else time.clock_gettime(clock)


@dataclass(frozen=True)
class ProcFiles:
    """Process start times from ``/proc`` (or from a folder laid out like it, in tests).

    Attributes:
        root: ``/proc``.
        ticks_per_second: the unit of ``/proc/PID/stat``'s start time (``SC_CLK_TCK``).
        boot_clock: seconds since boot now (``CLOCK_BOOTTIME``); None: use ``btime`` in ``root/stat``.
        wall_clock: epoch seconds now.
    """

    root: Path = Path("/proc")
    ticks_per_second: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))
    boot_clock: Callable[[], float | None] = _boot_clock
    wall_clock: Callable[[], float] = time.time

    def started_at(self, pid: str) -> float | None:
        """When process ``pid`` (``"1"``, ``"self"``) started, in epoch seconds; None where ``/proc`` cannot tell."""
        try:
            text = (self.root / pid / "stat").read_text()
            # "PID (COMMAND) STATE ...": the command may hold spaces and parentheses; field 22 is the start time.
            start_ticks = int(text[text.rindex(")") + 2 :].split()[19])
        except (OSError, ValueError, IndexError):
            return None
        since_boot = start_ticks / self.ticks_per_second
        now_since_boot = self.boot_clock()
        if now_since_boot is not None:
            return self.wall_clock() - (now_since_boot - since_boot)
        boot = self._boot_time()
        return None if boot is None else boot + since_boot

    def _boot_time(self) -> float | None:
        try:
            for line in (self.root / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    return float(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None


@dataclass(frozen=True)
class Start:
    """When something started, and how that is known.

    Attributes:
        epoch: epoch seconds.
        source: ``"LIGHTNING_APP_SESSION_START"``, ``"/proc/1"`` (the container's first process), ``"process
            start"``, ``"import time"``; a fallback says why, e.g. ``"process start; /proc/1 is 30.2 h old"``.
    """

    epoch: float
    source: str


def session_start(env: Mapping[str, str] | None = None, proc: ProcFiles | None = None) -> Start:
    """When this session started: ``LIGHTNING_APP_SESSION_START``, else inside a Kaggle notebook its container's
    first process, else this process's start (see the module's docstring). Raises `ConfigError` for a bad
    ``LIGHTNING_APP_SESSION_START``."""
    env = os.environ if env is None else env
    proc = proc or ProcFiles()
    given = start_from_environment(env, proc.wall_clock)
    if given is not None:
        return given
    if not in_kaggle_notebook(env):
        return process_start(env, proc)
    container = proc.started_at("1")
    if container is None:
        return _with_reason(process_start(env, proc), "no /proc/1")
    age = proc.wall_clock() - container
    if not -_FUTURE_TOLERANCE_SECONDS <= age <= KAGGLE_SESSION_SECONDS:
        # Older than a session (or from the future): whatever /proc/1 is here, it did not start with the session.
        return _with_reason(process_start(env, proc), f"/proc/1 is {age / 3600:.1f} h old")
    return Start(container, "/proc/1")


def process_start(env: Mapping[str, str] | None = None, proc: ProcFiles | None = None) -> Start:
    """What an explicit ``--deadline.budget`` counts from: ``LIGHTNING_APP_SESSION_START`` when set, else this
    process's start (``/proc/self``), else the time this package was imported."""
    env = os.environ if env is None else env
    proc = proc or ProcFiles()
    given = start_from_environment(env, proc.wall_clock)
    if given is not None:
        return given
    started = proc.started_at("self")
    return Start(started, "process start") if started is not None else Start(lightning_app.IMPORTED_AT, "import time")


def start_from_environment(env: Mapping[str, str] | None = None, wall_clock=time.time) -> Start | None:
    """``LIGHTNING_APP_SESSION_START`` as a `Start`; None when unset. Raises `ConfigError` for a value that is not
    a time in the past, in epoch seconds (milliseconds lie far in the future, and are refused too)."""
    env = os.environ if env is None else env
    text = env.get(SESSION_START_VARIABLE)
    if text is None or not text.strip():
        return None
    try:
        epoch = float(text)
    except ValueError:
        epoch = math.nan
    if not (math.isfinite(epoch) and 0 < epoch <= wall_clock() + _FUTURE_TOLERANCE_SECONDS):
        raise bad_value(
            SESSION_START_VARIABLE,
            text,
            "the session's start in epoch seconds, not in the future (as `date +%s` prints it)",
        )
    return Start(epoch, SESSION_START_VARIABLE)


def session_start_environment(start: Start | None = None) -> dict[str, str]:
    """What a sweep or a chain adds to the environment of a ``fit`` it starts, so that its budget counts from this
    session's start (default: `session_start`)."""
    start = start or session_start()
    return {SESSION_START_VARIABLE: f"{start.epoch:.3f}"}


def _with_reason(start: Start, reason: str) -> Start:
    return Start(start.epoch, f"{start.source}; {reason}")


# -- how long this run may train ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """One end to this run's training: the session's, an explicit budget's, the weekly GPU quota's.

    Attributes:
        ends_at: monotonic seconds (`time.monotonic`): a wall-clock step after the start changes nothing.
        text: how the start line names it, e.g. ``"12 h session from 08:14 UTC, /proc/1"``.
    """

    ends_at: float
    text: str


class SessionBudget:
    """How long this run may still train: ``--deadline.budget`` read against the session's facts.

    - ``auto``: inside a Kaggle notebook, 12 h from the session's start (`session_start`) less a half-hour margin
      (`KAGGLE_MARGIN_SECONDS`); elsewhere no limit;
    - a duration (``05:00:00``, ``90m``): from ``LIGHTNING_APP_SESSION_START`` when set, else from the process's
      start (`process_start`);
    - ``off``: no limit, and no quota is asked.

    `consider_gpu_quota` may add the weekly GPU quota as a further limit; the earliest limit wins. A bad
    ``LIGHTNING_APP_SESSION_START`` is refused (`ConfigError`) whatever the budget, so a sweep's mistake shows at
    once.

    Args:
        budget: ``--deadline.budget``.
        env: the environment (default ``os.environ``).
        proc: where process start times are read (default ``/proc``); its ``wall_clock`` is this budget's too.
        monotonic_clock: what deadlines are kept on.
    """

    def __init__(
        self,
        budget: str,
        env: Mapping[str, str] | None = None,
        proc: ProcFiles | None = None,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = os.environ if env is None else env
        self._proc = proc or ProcFiles()
        self._monotonic = monotonic_clock
        self.limits: list[Limit] = []
        self.quota_note: str | None = None
        self._quota_asked = False
        start_from_environment(self._env, self._proc.wall_clock)  # refuse a bad value, whatever the budget
        if budget == "auto":
            if in_kaggle_notebook(self._env):
                start = session_start(self._env, self._proc)
                self._add(start.epoch + KAGGLE_SESSION_SECONDS - KAGGLE_MARGIN_SECONDS, _session_text(start))
        elif budget != "off":
            seconds = parse_duration("--deadline.budget", budget).total_seconds()
            start = process_start(self._env, self._proc)
            self._add(start.epoch + seconds, f"{_span(seconds)} from {_clock_time(start.epoch)}, {start.source}")

    @property
    def enabled(self) -> bool:
        """Whether anything limits this run's training time."""
        return bool(self.limits)

    @property
    def quota_matters(self) -> bool:
        """Whether the weekly GPU quota can end this run's training: with a budget, inside a Kaggle notebook (a GPU
        elsewhere spends no Kaggle quota)."""
        return bool(self.limits) and in_kaggle_notebook(self._env)

    def remaining_seconds(self) -> float | None:
        """Seconds left before the earliest limit; None without a limit."""
        if not self.limits:
            return None
        return min(limit.ends_at for limit in self.limits) - self._monotonic()

    def consider_gpu_quota(
        self,
        read_quota: Callable[[], object],
        find_credentials: Callable[[], object],
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        """Also end before the weekly GPU quota does: for a run on a Kaggle notebook's GPU, asked by rank 0 only
        (once; later calls do nothing).

        Asked only where it matters (`quota_matters`) and with Kaggle credentials. A quota the client cannot read
        (``QuotaUnavailable``, a store error, anything else) is noted in `describe` ("GPU quota not checked: why")
        and never stops training.

        Args:
            read_quota: returns a ``GpuQuota`` (``left_seconds``, ``source``): the Kaggle client's, passed in by the
                caller (this module knows no client).
            find_credentials: returns the Kaggle credentials or None.
            redact: removes any credential from an error's text before it is shown.
        """
        if not self.quota_matters or self._quota_asked:
            return
        self._quota_asked = True
        if find_credentials() is None:
            self.quota_note = "GPU quota not checked: no Kaggle credentials"
            return
        try:
            quota = read_quota()
            left = float(quota.left_seconds)
            source = str(quota.source)
        except Exception as error:  # noqa: BLE001 - QuotaUnavailable, a StoreError, a bug: never stops training
            self.quota_note = f"GPU quota not checked: {_reason(error, redact)}"
            return
        self._add(self._proc.wall_clock() + left - KAGGLE_MARGIN_SECONDS, f"GPU quota {_span(left)}, {source}")

    def describe(self) -> str | None:
        """The start line's fragment, e.g. ``Session budget: 10.4 h left (12 h session from 08:14 UTC, /proc/1;
        GPU quota 21.3 h, quota_view)``; None without a limit. "Left" is what training may use, after the margin."""
        remaining = self.remaining_seconds()
        if remaining is None:
            return None
        parts = [limit.text for limit in self.limits] + ([self.quota_note] if self.quota_note else [])
        return f"Session budget: {_span(max(0.0, remaining))} left ({'; '.join(parts)})"

    def _add(self, ends_at_epoch: float, text: str) -> None:
        self.limits.append(Limit(self._monotonic() + (ends_at_epoch - self._proc.wall_clock()), text))


def _session_text(start: Start) -> str:
    return f"{KAGGLE_SESSION_SECONDS // 3600} h session from {_clock_time(start.epoch)}, {start.source}"


def _clock_time(epoch: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(epoch))


def _span(seconds: float) -> str:
    """``10.4 h``, ``12 h``, ``45 min``, ``20 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _reason(error: BaseException, redact: Callable[[str], str]) -> str:
    """An exception as a short phrase for one log line, with no credential in it."""
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return redact(text)[:200]
