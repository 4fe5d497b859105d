"""The Kaggle session: its folders, its start (from the environment, /proc/1, the process) and the time left,
including the weekly GPU quota. A faked clock and /proc; no test sleeps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import lightning_app
from lightning_app import session
from lightning_app.errors import ConfigError
from lightning_app.persistence.kaggle.credentials import redact_secrets
from lightning_app.persistence.store import TransientError
from lightning_app.session import (
    KAGGLE_MARGIN_SECONDS,
    SESSION_START_VARIABLE,
    ProcFiles,
    SessionBudget,
    Start,
)
from tests.cli_helpers import cli_env, fit_args, run

NOW = 1_767_253_200.0  # 2026-01-01 07:40:00 UTC
HOUR = 3600.0
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}


class Clock:
    """Wall clock, monotonic clock and seconds since boot, moving together when the test says so."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def wall(self) -> float:
        return NOW + self.elapsed

    def monotonic(self) -> float:
        return 500.0 + self.elapsed

    def boot(self) -> float:
        return 2 * 86400.0 + self.elapsed  # the machine booted two days before NOW

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


def _stat_line(pid: str, command: str, start_ticks: int) -> str:
    # Fields 3-21, then 22 (the start time in clock ticks since boot), then more.
    return f"{pid} ({command}) S " + " ".join(["0"] * 18) + f" {start_ticks} 123456 789 0\n"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_proc(tmp_path, clock):
    """``fake_proc(container_age=, process_age=)`` -> ProcFiles on a folder laid out like /proc; ages in seconds
    before NOW, None: no such file."""

    def make(container_age: float | None = None, process_age: float | None = None, btime: bool = False) -> ProcFiles:
        root = tmp_path / "proc"
        for pid, command, age in (("1", "tini", container_age), ("self", "python (3) main", process_age)):
            if age is not None:
                (root / pid).mkdir(parents=True, exist_ok=True)
                ticks = round((clock.boot() - age) * 100)
                (root / pid / "stat").write_text(_stat_line(pid, command, ticks))
        root.mkdir(exist_ok=True)
        (root / "stat").write_text(f"cpu  1 2 3\nbtime {int(NOW - 2 * 86400)}\nprocesses 42\n")
        return ProcFiles(root, 100, (lambda: None) if btime else clock.boot, clock.wall)

    return make


def _utc(epoch: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(epoch))


# -- folders and run type ------------------------------------------------------------------------------------------


def test_kaggle_folders_come_from_one_root():
    assert session.kaggle_input_dir({}) == Path("/kaggle/input")
    assert session.kaggle_working_dir({}) == Path("/kaggle/working")
    env = {"LIGHTNING_APP_KAGGLE_ROOT": "/tmp/fake-kaggle"}
    assert session.kaggle_input_dir(env) == Path("/tmp/fake-kaggle/input")
    assert session.kaggle_working_dir(env) == Path("/tmp/fake-kaggle/working")


def test_kaggle_folders_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_APP_KAGGLE_ROOT", str(tmp_path))
    assert session.kaggle_input_dir() == tmp_path / "input"
    assert session.kaggle_working_dir() == tmp_path / "working"


def test_run_type_and_notebook():
    assert (session.in_kaggle_notebook({}), session.run_type({})) == (False, None)
    assert (session.in_kaggle_notebook({"KAGGLE_KERNEL_RUN_TYPE": ""}), session.run_type({})) == (False, None)
    batch = {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}
    assert (session.in_kaggle_notebook(batch), session.run_type(batch)) == (True, "Batch")
    assert session.run_type(KAGGLE) == "Interactive"


# -- process start times -----------------------------------------------------------------------------------------


def test_a_start_is_read_against_the_boot_clock(fake_proc):
    proc = fake_proc(container_age=HOUR, process_age=600)
    assert proc.started_at("1") == pytest.approx(NOW - HOUR)
    assert proc.started_at("self") == pytest.approx(NOW - 600)  # a command with spaces and parentheses


def test_without_the_boot_clock_btime_is_used(fake_proc):
    proc = fake_proc(container_age=HOUR, btime=True)
    assert proc.started_at("1") == pytest.approx(NOW - HOUR)


def test_unreadable_proc_tells_nothing(fake_proc, tmp_path):
    proc = fake_proc()
    assert proc.started_at("1") is None
    (tmp_path / "proc" / "1").mkdir()
    (tmp_path / "proc" / "1" / "stat").write_text("1 (tini) S 0\n")
    assert proc.started_at("1") is None


def test_the_real_proc_gives_this_process_a_start_in_the_past():
    started = ProcFiles().started_at("self")
    assert started is not None and time.time() - 3600 * 24 * 365 < started <= time.time() + 1


# -- the session's start and its source ---------------------------------------------------------------------------


def test_the_environment_comes_first(fake_proc):
    proc = fake_proc(container_age=HOUR, process_age=60)
    env = {**KAGGLE, SESSION_START_VARIABLE: str(NOW - 2 * HOUR)}
    assert session.session_start(env, proc) == Start(NOW - 2 * HOUR, SESSION_START_VARIABLE)
    assert session.process_start(env, proc) == Start(NOW - 2 * HOUR, SESSION_START_VARIABLE)


def test_inside_kaggle_the_session_starts_with_the_container(fake_proc):
    start = session.session_start(KAGGLE, fake_proc(container_age=HOUR, process_age=60))
    assert (start.epoch, start.source) == (pytest.approx(NOW - HOUR), "/proc/1")


def test_outside_kaggle_the_session_is_the_process(fake_proc):
    start = session.session_start({}, fake_proc(container_age=HOUR, process_age=60))
    assert (start.epoch, start.source) == (pytest.approx(NOW - 60), "process start")


def test_a_container_older_than_a_session_is_not_the_session(fake_proc):
    start = session.session_start(KAGGLE, fake_proc(container_age=30 * HOUR, process_age=60))
    assert (start.epoch, start.source) == (pytest.approx(NOW - 60), "process start; /proc/1 is 30.0 h old")


def test_without_proc_the_import_time_stands_in(fake_proc, monkeypatch):
    monkeypatch.setattr(lightning_app, "IMPORTED_AT", NOW - 5)
    assert session.session_start(KAGGLE, fake_proc()) == Start(NOW - 5, "import time; no /proc/1")
    assert session.process_start({}, fake_proc()) == Start(NOW - 5, "import time")


@pytest.mark.parametrize(
    "value",
    ["yesterday", "nan", "inf", "-5", "0", str(NOW + 3600), str(NOW * 1000)],
    ids=["text", "nan", "inf", "negative", "zero", "future", "milliseconds"],
)
def test_a_bad_session_start_is_refused_in_one_line(value, fake_proc):
    with pytest.raises(ConfigError) as refused:
        session.session_start({SESSION_START_VARIABLE: value}, fake_proc())
    assert str(refused.value) == (
        f"LIGHTNING_APP_SESSION_START: got {value!r}; expected the session's start in epoch seconds, not in the "
        "future (as `date +%s` prints it)"
    )


def test_a_child_is_given_this_sessions_start():
    env = session.session_start_environment(Start(NOW - 123.25, "/proc/1"))
    assert env == {SESSION_START_VARIABLE: f"{NOW - 123.25:.3f}"}
    assert session.start_from_environment(env, lambda: NOW) == Start(NOW - 123.25, SESSION_START_VARIABLE)


# -- the budget --------------------------------------------------------------------------------------------------


def _budget(budget: str, env: dict, proc: ProcFiles, clock: Clock) -> SessionBudget:
    return SessionBudget(budget, env=env, proc=proc, monotonic_clock=clock.monotonic)


def test_auto_inside_kaggle_counts_12_hours_from_the_sessions_start(fake_proc, clock):
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    assert budget.remaining_seconds() == pytest.approx(12 * HOUR - HOUR - KAGGLE_MARGIN_SECONDS)
    assert budget.describe() == f"Session budget: 10.5 h left (12 h session from {_utc(NOW - HOUR)}, /proc/1)"
    clock.advance(1800)
    assert budget.remaining_seconds() == pytest.approx(10 * HOUR)


def test_a_second_fit_in_the_session_gets_what_is_left(fake_proc, clock):
    """The complaint of the issue: a fit started after 11 h of the session has half an hour, not 11:30."""
    budget = _budget("auto", KAGGLE, fake_proc(container_age=11 * HOUR, process_age=5), clock)
    assert budget.remaining_seconds() == pytest.approx(0.5 * HOUR)


def test_auto_from_the_environment_inside_kaggle(fake_proc, clock):
    env = {**KAGGLE, SESSION_START_VARIABLE: str(NOW - 3 * HOUR)}
    budget = _budget("auto", env, fake_proc(container_age=HOUR, process_age=60), clock)
    assert budget.remaining_seconds() == pytest.approx(8.5 * HOUR)
    assert budget.describe().endswith(f"(12 h session from {_utc(NOW - 3 * HOUR)}, LIGHTNING_APP_SESSION_START)")


def test_auto_outside_kaggle_is_off(fake_proc, clock):
    budget = _budget("auto", {}, fake_proc(container_age=HOUR, process_age=60), clock)
    assert (budget.enabled, budget.remaining_seconds(), budget.describe()) == (False, None, None)


def test_off_is_off_even_inside_kaggle(fake_proc, clock):
    budget = _budget("off", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    assert (budget.enabled, budget.remaining_seconds()) == (False, None)


def test_an_explicit_budget_counts_from_the_process_start(fake_proc, clock):
    # Inside Kaggle too: an explicit budget is the user's, from this process's start (not /proc/1).
    budget = _budget("05:00:00", KAGGLE, fake_proc(container_age=3 * HOUR, process_age=600), clock)
    assert budget.remaining_seconds() == pytest.approx(5 * HOUR - 600)
    assert budget.describe() == f"Session budget: 4.8 h left (5 h from {_utc(NOW - 600)}, process start)"


def test_an_explicit_budget_counts_from_the_given_session_start(fake_proc, clock):
    env = {SESSION_START_VARIABLE: str(NOW - 2 * HOUR)}
    budget = _budget("90m", env, fake_proc(process_age=600), clock)
    assert budget.remaining_seconds() == pytest.approx(-0.5 * HOUR)
    assert budget.describe() == (
        f"Session budget: 0 s left (1.5 h from {_utc(NOW - 2 * HOUR)}, LIGHTNING_APP_SESSION_START)"
    )


def test_a_bad_session_start_is_refused_whatever_the_budget(fake_proc, clock):
    with pytest.raises(ConfigError, match="LIGHTNING_APP_SESSION_START: got 'soon'"):
        _budget("off", {SESSION_START_VARIABLE: "soon"}, fake_proc(), clock)


def test_a_bad_budget_names_the_option(fake_proc, clock):
    with pytest.raises(ConfigError, match="--deadline.budget: got 'forever'"):
        _budget("forever", {}, fake_proc(), clock)


# -- the weekly GPU quota ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """What ``persistence.kaggle.quota.read_gpu_quota`` returns (``GpuQuota``), as far as the budget reads it."""

    used_seconds: float
    allowed_seconds: float
    source: str = "quota_view"

    @property
    def left_seconds(self) -> float:
        return self.allowed_seconds - self.used_seconds


class QuotaUnavailable(Exception):
    """Stands in for ``persistence.kaggle.quota.QuotaUnavailable``: the budget catches every exception alike."""


class Reader:
    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self):
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def _credentials():
    return object()


def test_a_quota_shorter_than_the_session_ends_the_run_first(fake_proc, clock):
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    reader = Reader(Quota(used_seconds=27 * HOUR, allowed_seconds=30 * HOUR))
    budget.consider_gpu_quota(reader, _credentials)
    assert reader.calls == 1
    assert budget.remaining_seconds() == pytest.approx(3 * HOUR - KAGGLE_MARGIN_SECONDS)
    assert budget.describe() == (
        f"Session budget: 2.5 h left (12 h session from {_utc(NOW - HOUR)}, /proc/1; GPU quota 3 h, quota_view)"
    )
    clock.advance(HOUR)
    assert budget.remaining_seconds() == pytest.approx(1.5 * HOUR)


def test_a_quota_longer_than_the_session_changes_nothing(fake_proc, clock):
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    budget.consider_gpu_quota(Reader(Quota(8.7 * HOUR, 30 * HOUR, "kagglesdk")), _credentials)
    assert budget.remaining_seconds() == pytest.approx(10.5 * HOUR)
    assert budget.describe().endswith("/proc/1; GPU quota 21.3 h, kagglesdk)")


def test_the_quota_also_bounds_an_explicit_budget_inside_kaggle(fake_proc, clock):
    budget = _budget("20h", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    budget.consider_gpu_quota(Reader(Quota(25 * HOUR, 30 * HOUR)), _credentials)
    assert budget.remaining_seconds() == pytest.approx(5 * HOUR - KAGGLE_MARGIN_SECONDS)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (QuotaUnavailable("kaggle 1.8.4 has no quota call and kagglesdk is not installed"), "kaggle 1.8.4 has no"),
        (TransientError("HTTP 503 from GetAcceleratorQuotaStatistics\nbody..."), "HTTP 503 from GetAccelerator"),
        (RuntimeError(), "RuntimeError"),
    ],
    ids=["unavailable", "store-error", "a bug"],
)
def test_a_quota_that_cannot_be_read_is_said_and_never_stops_training(fake_proc, clock, error, said):
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    budget.consider_gpu_quota(Reader(error), _credentials)
    assert budget.remaining_seconds() == pytest.approx(10.5 * HOUR)
    text = budget.describe()
    assert text.startswith(f"Session budget: 10.5 h left (12 h session from {_utc(NOW - HOUR)}, /proc/1; ")
    assert f"; GPU quota not checked: {said}" in text and "\n" not in text


def test_a_key_in_a_quota_error_is_never_said(fake_proc, clock, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    error = TransientError("401 for key 0123456789abcdef0123456789abcdef")
    budget.consider_gpu_quota(Reader(error), _credentials, redact_secrets)  # the deadline passes this redaction
    assert "0123456789abcdef" not in budget.describe()
    assert "GPU quota not checked: 401 for key ***" in budget.describe()


def test_without_credentials_the_quota_is_not_asked(fake_proc, clock):
    budget = _budget("auto", KAGGLE, fake_proc(container_age=HOUR, process_age=60), clock)
    reader = Reader(Quota(0, 30 * HOUR))
    budget.consider_gpu_quota(reader, lambda: None)
    assert reader.calls == 0
    assert budget.describe().endswith("; GPU quota not checked: no Kaggle credentials)")


@pytest.mark.parametrize(("budget_text", "env"), [("05:00:00", {}), ("off", KAGGLE), ("auto", {})])
def test_outside_kaggle_or_without_a_budget_the_quota_is_not_asked(fake_proc, clock, budget_text, env):
    budget = _budget(budget_text, env, fake_proc(container_age=HOUR, process_age=60), clock)
    reader = Reader(Quota(29 * HOUR, 30 * HOUR))
    budget.consider_gpu_quota(reader, _credentials)
    assert reader.calls == 0 and budget.quota_note is None


def test_the_cli_refuses_a_bad_session_start_in_one_line(tmp_path):
    env = cli_env(tmp_path / "home", {SESSION_START_VARIABLE: "08:14"})
    result = run(fit_args(), tmp_path, env, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: LIGHTNING_APP_SESSION_START: got '08:14'; expected the session's start in epoch seconds, not in the "
        "future (as `date +%s` prints it)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()
