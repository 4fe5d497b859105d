"""Trials as child processes: they end with the sweep, share its budget and devices, and say how they ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lightning_app.sweep.plan import Trial
from lightning_app.sweep.runner import exit_status
from lightning_app.sweep.scheduler import Devices, Outcome, Scheduler
from tests.cli_helpers import REPO
from tests.support.waiting import wait_for

SPAWNER = """
import subprocess, sys, time
from lightning_app.sweep.scheduler import _die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=_die_with_parent())
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing runs any more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_trial_dies_with_the_sweep_that_started_it_and_shares_its_process_group():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        trial = int(sweep.stdout.readline())
        assert os.getpgid(trial) == os.getpgid(sweep.pid)  # one process group: what ends the group ends the trial
        sweep.kill()  # the sweep alone, as an out-of-memory kill would
        sweep.wait(30)
        wait_for(lambda: _gone(trial), 30, "the trial to end with its sweep")
    finally:
        sweep.kill()


def _trial(name: str, state_bytes: int = 0) -> Trial:
    return Trial(name, (("model.pe_type", name),), [], {}, {"init_args": {"seq_len": 8}}, state_bytes)


def _scheduler(tmp_path: Path, scripts: dict[str, str], remaining=lambda: None, parallel: int = 1) -> Scheduler:
    """A scheduler whose trials are small Python scripts (``scripts[name]``), not fits."""
    return Scheduler(
        devices=Devices(parallel),
        command=lambda trial: [sys.executable, "-c", scripts[trial.name]],
        env=dict(os.environ),
        log_dir=tmp_path / "logs" / "sweep",
        remaining=remaining,
        needed=lambda trial, startup: 30.0 + startup,
    )


def test_how_each_trial_ended_and_a_refused_input_stops_new_starts(tmp_path):
    scripts = {
        "ok": "print('Training ok on cpu')",
        "crash": "raise SystemExit(1)",
        "refused": "import sys; print('error: --resume: could not read kaggle:me/x (500)'); sys.exit(2)",
        "after": "print('never')",
    }
    scheduler = _scheduler(tmp_path, scripts)
    outcomes = scheduler.run([_trial(name) for name in scripts])
    assert outcomes["ok"] == Outcome("ended", 0)
    assert outcomes["crash"].kind == "crashed" and outcomes["crash"].code == 1
    assert outcomes["refused"] == Outcome("error", 2, "--resume: could not read kaggle:me/x (500)")
    assert outcomes["after"] == Outcome("skipped", line="a trial's input was refused")
    assert not (tmp_path / "logs" / "sweep" / "after.log").exists()
    assert "Training ok on cpu" in (tmp_path / "logs" / "sweep" / "ok.log").read_text()  # each trial's own log
    assert scheduler.startup < 30  # measured: the start line of "ok"
    assert exit_status(False, outcomes.values()) == 2
    assert exit_status(False, [outcomes["ok"], outcomes["crash"]]) == 1
    assert exit_status(False, [outcomes["ok"]]) == 3 and exit_status(True, [outcomes["ok"]]) == 0


def test_a_trial_starts_only_while_the_budget_leaves_time_for_it(tmp_path):
    left = iter([100.0, 10.0, 10.0, 10.0])  # room for the first; then less than the 30 s + start-up it needs
    scheduler = _scheduler(tmp_path, {"a": "pass", "b": "pass"}, remaining=lambda: next(left))
    outcomes = scheduler.run([_trial("a"), _trial("b")])
    assert outcomes["a"].kind == "ended"
    assert outcomes["b"].kind == "skipped" and outcomes["b"].line.startswith("no time left in this session (10 s")
    assert scheduler.stopping == "budget"


def test_a_signal_to_the_sweep_reaches_the_running_trials_once_and_no_trial_starts_after(tmp_path):
    waits_for_sigterm = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saved and published', flush=True), sys.exit(0)))\n"
        "print('Train' + 'ing', flush=True)\n"  # the log's first line holds this command: not the word itself
        "time.sleep(60)\n"
        "sys.exit(9)\n"
    )
    scripts = {"a": waits_for_sigterm, "b": waits_for_sigterm, "c": "print('never')"}
    scheduler = _scheduler(tmp_path, scripts, parallel=2)
    logs = tmp_path / "logs" / "sweep"

    def stop_when_both_train() -> None:
        wait_for(lambda: all("Training" in _read(logs / f"{n}.log") for n in "ab"), 60, "both trials to train")
        os.kill(os.getpid(), signal.SIGTERM)  # to the sweep: its handler (in the main thread, in `run`) passes it on

    stopper = threading.Thread(target=stop_when_both_train)
    stopper.start()
    outcomes = scheduler.run([_trial(name) for name in scripts])
    stopper.join()
    assert outcomes["a"] == outcomes["b"] == Outcome("ended", 0)  # each saved, published and exited cleanly
    assert outcomes["c"] == Outcome("skipped", line="the sweep was stopped by a signal")
    assert exit_status(False, outcomes.values()) == 3


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_a_failure_of_the_sweep_itself_stops_its_running_trials_with_sigterm_so_they_save(tmp_path):
    saves_on_sigterm = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('sav' + 'ed on SIGTERM', flush=True), sys.exit(0)))\n"
        "print('Train' + 'ing', flush=True)\n"
        "time.sleep(60)\n"
        "sys.exit(9)\n"
    )
    logs = tmp_path / "logs" / "sweep"
    calls = []

    def remaining() -> float:
        calls.append(1)
        if len(calls) == 2:  # deciding on the second trial, with the first one training: the sweep fails
            wait_for(lambda: "Training" in _read(logs / "a.log"), 60, "the first trial to train")
            raise RuntimeError("a bug in the sweep")
        return 1e6

    scheduler = _scheduler(tmp_path, {"a": saves_on_sigterm, "b": "print('never')"}, remaining, parallel=2)
    with pytest.raises(RuntimeError, match="a bug in the sweep"):
        scheduler.run([_trial("a"), _trial("b")])
    assert "saved on SIGTERM" in _read(logs / "a.log")  # not left to the parent-death SIGKILL (the log's first
    # line holds the command, hence the words split in the script)
    assert not (logs / "b.log").exists()
