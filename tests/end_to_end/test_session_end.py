"""Surviving the end of a session: a time budget, SIGTERM, three whole sessions, DDP from a notebook cell.

DDP killed mid-epoch and resumed: ``test_ddp_rng_resume.py``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from lightning_app.persistence.folder import read_manifest
from tests.cli_helpers import (
    RESUME_FLAGS,
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    run,
    start,
)
from tests.fake_kaggle import FakeKaggle
from tests.support.kill_switch import kill_config
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _newest_version_step(fake: FakeKaggle) -> int:
    import json

    ref = next(iter(fake.datasets))
    return json.loads(fake.versions(ref)[-1].files["manifest.json"])["checkpoints"][0]["global_step"]


def test_a_short_budget_stops_training_in_time_with_the_checkpoint_published(tmp_path, fake_kaggle):
    # The budget counts from the session's start that a sweep or a chain gives: here, now.
    started = time.time()
    env = cli_env(tmp_path / "home", {**fake_kaggle.env(tmp_path), "LIGHTNING_APP_SESSION_START": f"{started:.3f}"})
    # Events, not wall-clock bounds: how far 20 s gets depends on the machine's load (interpreter start-up counts).
    result = run(
        fit_args(*RESUME_FLAGS, "--trainer.max_epochs", "50", "--deadline.budget", "20s", "--deadline.reserve", "3s"),
        tmp_path,
        env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # The start line (a warning instead when a loaded machine took the 20 s before training began).
    pattern = r"Session budget: (\d+) s left \(20 s from (\d\d:\d\d) UTC, LIGHTNING_APP_SESSION_START\)"
    start_line = re.search(pattern, output)
    assert start_line, output[-3000:]
    assert int(start_line[1]) <= 20 and start_line[2] == time.strftime("%H:%M", time.gmtime(started))
    final = read_manifest(tmp_path / "checkpoints").newest_first()[0]
    assert final.global_step < 50 * 32, "the budget did not stop training"
    stopped = re.search(r"Stopp(?:ed at step (\d+)|ing after this epoch) to stay within the session budget", output)
    assert stopped, output[-3000:]
    assert stopped[1] is None or int(stopped[1]) == final.global_step
    assert _newest_version_step(fake_kaggle) == final.global_step, "the last checkpoint was not published"


def test_sigterm_saves_publishes_and_exits_zero(tmp_path, fake_kaggle):
    env = cli_env(tmp_path / "home", fake_kaggle.env(tmp_path))
    process = start(fit_args(*RESUME_FLAGS, "--trainer.max_epochs", "50"), tmp_path, env, tmp_path / "output.txt")
    try:
        wait_for(
            lambda: fake_kaggle.datasets and fake_kaggle.versions(next(iter(fake_kaggle.datasets))),
            120,
            "a first published version",
        )
        published_before = _newest_version_step(fake_kaggle)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        process.kill()
    output = (tmp_path / "output.txt").read_text()
    assert "SIGTERM received" in output
    final = read_manifest(tmp_path / "checkpoints").newest_first()[0]
    assert final.global_step > published_before
    assert final.global_step < 50 * 32
    assert _newest_version_step(fake_kaggle) == final.global_step, "the newest version lacks the last checkpoint"


def test_three_sessions_end_where_one_uninterrupted_run_ends(tmp_path, fake_kaggle, uninterrupted):
    sessions = [tmp_path / f"session{i}" for i in (1, 2, 3)]
    for folder in sessions:
        folder.mkdir()
    ref_env = lambda folder: cli_env(folder / "home", fake_kaggle.env(folder))  # noqa: E731

    # Session 1: trains, publishes, and is SIGKILLed mid-epoch.
    first = run(
        fit_args(*RESUME_FLAGS, "--config", str(kill_config(sessions[0], "KillAfterPublished", 50))),
        sessions[0],
        ref_env(sessions[0]),
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert _newest_version_step(fake_kaggle) == 50

    # Session 2: the dataset is attached as Kaggle mounts it; the session's budget is all but gone at start.
    ref = next(iter(fake_kaggle.datasets))
    mount = tmp_path / "input" / "datasets" / ref
    mount.mkdir(parents=True)
    for name, data in fake_kaggle.versions(ref)[-1].files.items():
        (mount / name).write_bytes(data)
    second = run(
        fit_args(
            *RESUME_FLAGS,
            "--resume",
            "--restore.input_dir",
            str(tmp_path / "input"),
            "--deadline.budget",
            "60s",
            "--deadline.reserve",
            "58s",
        ),
        sessions[1],
        ref_env(sessions[1]),
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert f"found in {mount}" in output and "to stay within the session budget" in output
    stopped_at = _newest_version_step(fake_kaggle)
    assert 50 < stopped_at < 96

    # Session 3: nothing attached; the newest version comes through the API.
    third = run(
        fit_args(*RESUME_FLAGS, "--resume", "--restore.input_dir", str(sessions[2] / "none")),
        sessions[2],
        ref_env(sessions[2]),
    )
    output = third.stdout + third.stderr
    assert third.returncode == 0, output[-3000:]
    assert f"(epoch 1, step {stopped_at}) downloaded from kaggle:{ref}" in output
    assert_same_training_state(
        load(newest_checkpoint(sessions[2] / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )


NOTEBOOK_CELL = """
from lightning_app.commands import main
main(["fit", "--config", {config!r}, "--trainer.devices", "2", "--trainer.strategy", "ddp_notebook",
      "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "{epochs}", *{extra!r}])
"""


def test_ddp_notebook_from_inside_the_notebook_process_trains_and_resumes(tmp_path):
    from tests.cli_helpers import SMOKE

    def cell(epochs: int, *extra: str) -> subprocess.CompletedProcess:
        code = NOTEBOOK_CELL.format(config=str(SMOKE), epochs=epochs, extra=list(extra))
        return run([sys.executable, "-c", code], tmp_path, cli_env(tmp_path / "home"))

    first = cell(1)
    assert first.returncode == 0, first.stderr[-3000:]
    second = cell(2, "--resume")
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert output.count("Resuming from kaggle_epoch_0_") == 1  # restored once, before the workers were forked
    assert [e.epoch for e in read_manifest(tmp_path / "checkpoints").newest_first()][:2] == [1, 0]
