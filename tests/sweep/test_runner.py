"""One session of a sweep, without training: what each trial's `fit` is told, and the trials it must not start."""

from __future__ import annotations

import logging

from lightning_app.sweep.runner import TRIALS_REMAIN, Publishing, SweepRunner
from lightning_app.sweep.scheduler import Devices
from lightning_app.sweep.state import TrialState
from tests.sweep.test_plan import _plan


def _runner(tmp_path, *grid: str) -> SweepRunner:
    plan = _plan("--sweep.grid", ",".join(grid) if grid else "model.lr=0.001,0.003")
    plan.restore["input_dir"] = str(tmp_path / "input")
    runner = SweepRunner(plan, Devices(1), Publishing(why_none="syncing is off"), tmp_path / "logs")
    runner.stores = {trial.name: None for trial in plan.trials}
    return runner


def test_each_trial_resumes_from_its_own_attached_dataset_only(tmp_path):
    """A grid over `model.lr`: both trials' checkpoints fit the same model, so `--resume` must not see the other's."""
    runner = _runner(tmp_path)
    first, second = runner.plan.trials
    attached = tmp_path / "input" / "datasets" / "me" / first.name
    attached.mkdir(parents=True)
    (tmp_path / "input" / "datasets" / "me" / "someone-elses-run").mkdir()
    assert f"--restore.input_dir={attached}" in runner._command(first)
    # Not attached: a folder that does not exist, never the whole input folder.
    assert f"--restore.input_dir={tmp_path / 'input' / second.name}" in runner._command(second)


def test_a_trial_whose_dataset_cannot_be_read_waits_for_a_later_session(tmp_path, monkeypatch, caplog):
    runner = _runner(tmp_path)
    blocked, readable = runner.plan.trials
    states = {blocked.name: TrialState(unreadable="HTTP 503"), readable.name: TrialState()}
    monkeypatch.setattr(runner, "read_states", lambda trials: {t.name: states[t.name] for t in trials})
    scheduled = []
    monkeypatch.setattr(runner, "_schedule", lambda pending: scheduled.extend(pending) or {})
    monkeypatch.setattr(runner, "_report", lambda states, always: 0)
    with caplog.at_level(logging.INFO, logger="lightning_app"):
        assert runner.run() == TRIALS_REMAIN  # not 2: nothing was wrong with the input
    assert scheduled == [readable]
    assert "not started: its dataset could not be read (HTTP 503); run the sweep again later" in caplog.text
