"""Session 2 in a fresh working directory: restore from an attached input or from the dataset through the real
kaggle client (fake server), resume, and end bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from lightning_app.persistence.folder import MANIFEST_NAME, read_manifest, write_manifest
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


def _tree_state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _checkpoint_downloads(fake_kaggle) -> list:
    """The one-file downloads of checkpoints (a restore reads the version's manifest first, also one file)."""
    return [r for r in fake_kaggle.calls("DownloadDataset") if b'.ckpt"' in r.body]


def _session_one(work: Path, env: dict, kind: str, step: int) -> None:
    killed = run(fit_args(*RESUME_FLAGS, "--config", str(kill_config(work, kind, step))), work, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def test_session_two_resumes_from_an_attached_input_in_the_new_mount_layout(tmp_path, uninterrupted):
    first, second = tmp_path / "session1", tmp_path / "session2"
    first.mkdir(), second.mkdir()
    _session_one(first, cli_env(first / "home"), "KillAfterCheckpoint", 50)
    # What Kaggle mounts for an attached version: the newest checkpoint and its manifest, read-only.
    mount = tmp_path / "input" / "datasets" / "fake-user" / "sinusoidal-tiny-checkpoints"
    mount.mkdir(parents=True)
    newest = newest_checkpoint(first / "checkpoints")
    shutil.copy2(newest, mount / newest.name)
    write_manifest(mount, read_manifest(first / "checkpoints").subset([newest.name]))
    for path in [mount, *mount.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = _tree_state(tmp_path / "input")

    resumed = run(
        fit_args(*RESUME_FLAGS, "--resume", "--restore.input_dir", str(tmp_path / "input")),
        second,
        cli_env(second / "home"),
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert resumed_step(output) == 50
    assert f"found in {mount}" in output
    assert _tree_state(tmp_path / "input") == before, "the read-only input was written to"
    new = [e for e in read_manifest(second / "checkpoints").entries.values() if e.file != newest.name]
    assert new and min(e.global_step for e in new) > 50, "the resumed run saved at or before its start"
    assert_same_training_state(
        load(newest_checkpoint(second / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )


def test_session_two_with_nothing_attached_downloads_the_newest_version(tmp_path, fake_kaggle, uninterrupted):
    first, second = tmp_path / "session1", tmp_path / "session2"
    first.mkdir(), second.mkdir()
    _session_one(first, cli_env(first / "home", fake_kaggle.env(first)), "KillAfterPublished", 50)
    ref = next(iter(fake_kaggle.datasets))
    assert "kaggle_epoch_1_" in " ".join(fake_kaggle.versions(ref)[-1].files)

    env = cli_env(second / "home", fake_kaggle.env(second))
    resumed = run(fit_args(*RESUME_FLAGS, "--resume", "--restore.input_dir", str(second / "none")), second, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert resumed_step(output) == 50
    assert f"downloaded from kaggle:{ref}" in output
    assert len(_checkpoint_downloads(fake_kaggle)) == 1  # the checkpoint alone, not the version's zip
    assert not (second / "checkpoints" / ".remote").exists()
    assert_same_training_state(
        load(newest_checkpoint(second / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )


def test_a_two_process_ddp_run_restores_once(tmp_path, fake_kaggle):
    first, second = tmp_path / "session1", tmp_path / "session2"
    first.mkdir(), second.mkdir()
    _session_one(first, cli_env(first / "home", fake_kaggle.env(first)), "KillAfterPublished", 32)
    env = cli_env(second / "home", fake_kaggle.env(second))
    ddp = ("--trainer.devices", "2", "--trainer.strategy", "ddp", "--restore.input_dir", str(second / "none"))
    resumed = run(fit_args(*RESUME_FLAGS, *ddp, "--resume"), second, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert len(_checkpoint_downloads(fake_kaggle)) == 1, "more than one process downloaded"
    assert output.count("Resuming from") == 1
    assert min(e.global_step for e in read_manifest(second / "checkpoints").entries.values()) >= 32


def test_resuming_a_different_model_is_refused_in_one_line(tmp_path):
    env = cli_env(tmp_path / "home")
    first = run(fit_args("--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"), tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = run(fit_args("--resume", "--model.pe_type", "alibi"), tmp_path, env)
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --resume: kaggle_epoch_0_") and "pe_type: checkpoint has 'sinusoidal'" in last
    assert (tmp_path / "checkpoints" / MANIFEST_NAME).is_file()
