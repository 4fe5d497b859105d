"""SIGKILL a real training run at chosen moments, resume it with --resume, and compare it bit for bit with a
run that was never interrupted: weights, optimizer state, schedule, step, and the training losses it logs."""

from __future__ import annotations

import csv
import re
import shutil
import signal
from pathlib import Path

import pytest

from lightning_app.persistence.folder import read_manifest
from tests.cli_helpers import RESUME_FLAGS as FLAGS
from tests.cli_helpers import (
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    run,
    train_losses,
)
from tests.support.kill_switch import kill_config

pytestmark = pytest.mark.slow


def _logged_losses(logs: Path) -> dict[Path, list[tuple[str, str]]]:
    """(step, train_loss) of every row of every metrics.csv under ``logs``, in file order."""
    logged = {}
    for path in sorted(logs.rglob("metrics.csv")):
        with open(path, newline="") as f:
            logged[path] = [(row["step"], row.get("train_loss") or "") for row in csv.DictReader(f)]
    return logged


def _killed_then_resumed(tmp_path: Path, kind: str, step: int) -> tuple[Path, int, str, dict]:
    env = cli_env(tmp_path / "home")
    killed = run(fit_args(*FLAGS, "--config", str(kill_config(tmp_path, kind, step))), tmp_path, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = read_manifest(tmp_path / "checkpoints")
    newest_before = max(e.global_step for e in before.entries.values())
    first_session = _logged_losses(tmp_path / "logs")
    resumed = run(fit_args(*FLAGS, "--resume"), tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return tmp_path, newest_before, resumed.stdout + resumed.stderr, first_session


def _second_session_losses(
    work: Path, first_session: dict[Path, list[tuple[str, str]]], resumed_from: int
) -> dict[int, str]:
    """step -> train_loss of the rows the resumed session logged.

    The session boundary: the resumed session either continued the killed session's metrics file (the default
    ResumableCSVLogger, one file per experiment) or wrote a file of its own (a logger that makes a new version
    per run). Either way, the rows the killed session logged before the checkpoint resumed from must still be there,
    first and unchanged; the ones it logged after it are replaced by the resumed session's (each step once).
    """
    after = _logged_losses(work / "logs")
    assert set(first_session) <= set(after), "the first session's metrics file is gone"
    assert len(after) - len(first_session) in (0, 1), sorted(after)
    losses: dict[int, str] = {}
    for path, rows in after.items():
        before = [row for row in first_session.get(path, []) if int(row[0]) < resumed_from]
        assert rows[: len(before)] == before, f"the first session's rows in {path} changed"
        trained = [int(step) for step, loss in rows if loss]
        assert len(trained) == len(set(trained)), f"a step's training row is in {path} twice"
        for step, loss in rows[len(before) :]:
            if loss:
                losses[int(step)] = loss
    return losses


def _assert_exact(
    work: Path, resumed_from: int, output: str, uninterrupted: Path, first_session: dict[Path, list]
) -> None:
    match = re.search(r"Resuming from kaggle_epoch_\d+_[\d-]+\.ckpt \(epoch \d+, step (\d+)\)", output)
    assert match, output[-3000:]
    assert int(match[1]) == resumed_from
    # It really resumed: a silent restart from step 0 (a checkpoint that failed to load) would also end with
    # equal weights, so check that the second session's first logged step is the checkpoint's.
    second_session = _second_session_losses(work, first_session, resumed_from)
    assert min(second_session) == resumed_from, "the resumed session did not start at the checkpoint's step"
    expected = train_losses(uninterrupted / "logs")
    assert second_session == {s: v for s, v in expected.items() if s >= resumed_from}
    assert_same_training_state(
        load(newest_checkpoint(work / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )


def test_kill_right_after_an_epoch_checkpoint(tmp_path, uninterrupted):
    work, step, output, first_session = _killed_then_resumed(tmp_path, "KillAfterCheckpoint", 32)
    assert step == 32
    _assert_exact(work, step, output, uninterrupted, first_session)


def test_kill_mid_epoch_right_after_a_step_checkpoint(tmp_path, uninterrupted):
    work, step, output, first_session = _killed_then_resumed(tmp_path, "KillAfterCheckpoint", 50)
    assert step == 50
    _assert_exact(work, step, output, uninterrupted, first_session)


def test_kill_during_a_checkpoint_write(tmp_path, uninterrupted):
    work, step, output, first_session = _killed_then_resumed(tmp_path, "KillDuringCheckpointWrite", 70)
    assert step == 64, "the torn step-70 checkpoint must not be in the manifest"
    assert not list((work / "checkpoints").glob(".*.tmp")), "the torn write was left behind"
    _assert_exact(work, step, output, uninterrupted, first_session)


def test_kill_between_checkpoints(tmp_path, uninterrupted):
    work, step, output, first_session = _killed_then_resumed(tmp_path, "KillAtStep", 77)
    assert step == 70
    _assert_exact(work, step, output, uninterrupted, first_session)


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(tmp_path, uninterrupted):
    work = tmp_path
    shutil.copytree(uninterrupted / "checkpoints", work / "checkpoints")
    manifest = read_manifest(work / "checkpoints")
    newest, previous = manifest.newest_first()[:2]
    path = work / "checkpoints" / newest.file
    path.write_bytes(path.read_bytes()[: newest.size // 2])
    resumed = run(fit_args(*FLAGS, "--resume", "--trainer.max_epochs", "3"), work, cli_env(work / "home"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert f"Skipping {path}" in output
    assert f"Resuming from {previous.file}" in output


def test_bf16_mixed_killed_mid_epoch_resumes_bit_for_bit(tmp_path):
    bf16 = ("--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "2")
    reference, work = tmp_path / "uninterrupted", tmp_path / "killed"
    reference.mkdir(), work.mkdir()
    done = run(fit_args(*FLAGS, *bf16), reference, cli_env(reference / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    env = cli_env(work / "home")
    killed = run(fit_args(*FLAGS, *bf16, "--config", str(kill_config(work, "KillAtStep", 45))), work, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(fit_args(*FLAGS, *bf16, "--resume"), work, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(epoch 1, step 40)" in resumed.stdout + resumed.stderr
    assert_same_training_state(
        load(newest_checkpoint(work / "checkpoints")), load(newest_checkpoint(reference / "checkpoints"))
    )
