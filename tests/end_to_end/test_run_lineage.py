"""Runs that share a folder, a dataset or the inputs never step on each other (real CLI runs in subprocesses)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest

from lightning_app.persistence.folder import read_manifest
from tests.cli_helpers import (
    RESUME_FLAGS,
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    resumed_step,
    run,
)
from tests.support.kill_switch import kill_config

pytestmark = pytest.mark.slow


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("kaggle_epoch_*.ckpt"))}


def _run_ids(folder: Path) -> set[str]:
    return {e.run_id for e in read_manifest(folder).entries.values()}


def test_a_new_run_beside_another_leaves_it_alone_publishes_itself_and_resumes_exactly(
    tmp_path, fake_kaggle, uninterrupted
):
    env = cli_env(tmp_path / "home", fake_kaggle.env(tmp_path))
    folder = tmp_path / "checkpoints"
    # Another experiment of the same architecture, further along (step 60) than the new run will get (50).
    other = run(fit_args(*RESUME_FLAGS, "--model.lr", "0.001", "--trainer.max_steps", "60"), tmp_path, env)
    assert other.returncode == 0, other.stderr[-3000:]
    other_files, (other_id,) = _files(folder), _run_ids(folder)
    ref = next(iter(fake_kaggle.datasets))
    versions_before = len(fake_kaggle.versions(ref))

    kill = kill_config(tmp_path, "KillAfterPublished", 50)
    killed = run(fit_args(*RESUME_FLAGS, "--checkpoint.keep_last", "2", "--config", str(kill)), tmp_path, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (new_id,) = _run_ids(folder) - {other_id}
    new_entries = read_manifest(folder).newest_first(new_id)
    assert [e.global_step for e in new_entries] == [50, 40], "retention must keep the new run's own newest two"
    published = fake_kaggle.versions(ref)[versions_before:]
    assert published, "the new run published nothing"
    for version in published:
        entries = json.loads(version.files["manifest.json"])["checkpoints"]
        assert {e["run_id"] for e in entries} == {new_id}, "a version of the new run holds another run's checkpoint"
        assert set(version.files) - {"manifest.json", "metrics.csv"} == {e["file"] for e in entries}

    resumed = run(fit_args(*RESUME_FLAGS, "--checkpoint.keep_last", "2", "--resume"), tmp_path, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert resumed_step(output) == 50
    assert f"run {new_id}" in output and f"Left alone: run {other_id}" in output
    assert {n: h for n, h in _files(folder).items() if n in other_files} == other_files, "the other run changed"
    assert_same_training_state(load(newest_checkpoint(folder)), load(newest_checkpoint(uninterrupted / "checkpoints")))


def test_resuming_an_older_checkpoint_keeps_the_resumed_runs_saves(tmp_path):
    env = cli_env(tmp_path / "home")
    first = run(fit_args(*RESUME_FLAGS, "--trainer.max_steps", "40"), tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    older = next(e for e in read_manifest(tmp_path / "checkpoints").entries.values() if e.global_step == 10)
    resumed = run(
        fit_args(
            *RESUME_FLAGS,
            "--trainer.max_steps",
            "30",
            "--checkpoint.keep_last",
            "2",
            "--resume",
            str(tmp_path / "checkpoints" / older.file),
        ),
        tmp_path,
        env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = read_manifest(tmp_path / "checkpoints").newest_first()
    assert [e.global_step for e in kept] == [30, 20], "the resumed run's own checkpoints were deleted on arrival"
    assert all((tmp_path / "checkpoints" / e.file).is_file() for e in kept)
    names = [e.file for e in kept] + sorted(read_manifest(tmp_path / "checkpoints").retired)
    assert len(names) == len(set(names)), "a name was given to a second checkpoint"


def test_two_attached_runs_resume_takes_the_most_recently_checkpointed_and_names_both(tmp_path):
    inputs = tmp_path / "input" / "datasets" / "me"
    for name, steps in (("longer", "20"), ("recent", "10")):  # "recent" trains last, to a lower step
        work = tmp_path / name
        result = run(fit_args(*RESUME_FLAGS, "--trainer.max_steps", steps), work, cli_env(work / "home"))
        assert result.returncode == 0, result.stderr[-3000:]
        shutil.copytree(work / "checkpoints", inputs / f"{name}-checkpoints")
    (recent_id,), (longer_id,) = _run_ids(inputs / "recent-checkpoints"), _run_ids(inputs / "longer-checkpoints")
    session = tmp_path / "session"
    resumed = run(
        fit_args(
            *RESUME_FLAGS, "--trainer.max_steps", "12", "--resume", "--restore.input_dir", str(tmp_path / "input")
        ),
        session,
        cli_env(session / "home"),
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert resumed_step(output) == 10 and f"run {recent_id}" in output
    assert f"Left alone: run {longer_id}" in output


def test_sigterm_on_an_epochs_last_batch_saves_that_step_whatever_every_n_epochs_says(tmp_path):
    signal_config = kill_config(tmp_path, "SigtermAtLastBatch", 32)
    result = run(
        fit_args(*RESUME_FLAGS, "--checkpoint.every_n_epochs", "2", "--config", str(signal_config)),
        tmp_path,
        cli_env(tmp_path / "home"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "SIGTERM received" in output
    steps = {e.global_step: e for e in read_manifest(tmp_path / "checkpoints").entries.values()}
    assert 32 in steps and steps[32].end_of_epoch, f"no checkpoint of the stopped step: {sorted(steps)}"
    assert max(steps) == 32


@pytest.mark.parametrize("kind", ["KillBeforeManifest", "KillDuringStaging"])
def test_what_a_kill_at_the_worst_moment_leaves_is_cleaned_up_or_adopted_at_the_next_start(tmp_path, kind):
    env = cli_env(tmp_path / "home")
    folder, sync = tmp_path / "checkpoints", ("--sync.directory", str(tmp_path / "store"))
    killed = run(fit_args(*RESUME_FLAGS, *sync, "--config", str(kill_config(tmp_path, kind, 20))), tmp_path, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    listed = {e.global_step for e in read_manifest(folder).entries.values()}
    if kind == "KillBeforeManifest":
        assert listed == {10} and len(_files(folder)) == 2, "expected a complete step-20 file the manifest lacks"
    else:
        assert any((folder / ".staging").iterdir()), "expected a half-staged version"

    resumed = run(fit_args(*RESUME_FLAGS, *sync, "--resume", "--trainer.max_steps", "24"), tmp_path, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert resumed_step(output) == 20
    if kind == "KillBeforeManifest":
        assert "adopted 1 complete checkpoints" in output
    else:
        assert "removed 1 leftovers of a killed run (.staging)" in output
    assert set(_files(folder)) == set(read_manifest(folder).entries), "a checkpoint file is not in the manifest"
    assert not list(folder.glob(".*.tmp"))
