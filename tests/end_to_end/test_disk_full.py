"""A full checkpoint folder: this run's older checkpoints make room, the state is saved, the log says so with numbers,
the manifest matches the folder, and ``--resume`` continues; a folder too small for one checkpoint is NOT SAFE and
the last line says the state is not saved. Through the real CLI, with a folder limited by a test hook (always) and
on a small tmpfs (where this machine lets the test mount one)."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest

from lightning_app.persistence.folder import CHECKPOINT_GLOB, read_manifest
from tests.cli_helpers import cli_env, fit_args, newest_checkpoint, resumed_step, run
from tests.support.disk_quota import quota_config

pytestmark = pytest.mark.slow

QUIET = ("--trainer.enable_progress_bar", "false")


@pytest.fixture(scope="module")
def checkpoint_size(uninterrupted) -> int:
    """The size of one smoke.yaml checkpoint (every one of the run has the same)."""
    return newest_checkpoint(uninterrupted / "checkpoints").stat().st_size


def _manifest_matches_the_folder(folder: Path) -> set[str]:
    listed = set(read_manifest(folder).entries)
    assert listed == {p.name for p in folder.glob(CHECKPOINT_GLOB)}, "the manifest and the folder disagree"
    return listed


def _assert_made_room(output: str, folder: Path, size: int) -> None:
    line = next((x for x in output.splitlines() if x.startswith(f"disk full in {folder}")), None)
    assert line is not None, output[-3000:]
    match = re.fullmatch(
        rf"disk full in {re.escape(str(folder))} \((\d+\.\d) MB free, a checkpoint needs (\d+\.\d) MB\): "
        r"removed (kaggle_epoch_0_[\d-]+\.ckpt), saved (kaggle_epoch_2_[\d-]+\.ckpt)",
        line,
    )
    assert match, line
    assert float(match[1]) < size / 1e6 and float(match[2]) == round(size / 1e6, 1)
    kept = _manifest_matches_the_folder(folder)
    assert match[3] not in kept and match[4] in kept and len(kept) == 2
    assert "Final checkpoint kaggle_epoch_2_" in output


def test_older_checkpoints_make_room_and_resume_goes_on(tmp_path, checkpoint_size):
    env = cli_env(tmp_path / "home")
    quota = quota_config(tmp_path, int(2.5 * checkpoint_size))  # two checkpoints fit, the third does not
    full = run(fit_args(*QUIET, "--config", str(quota)), tmp_path, env)
    output = full.stdout + full.stderr
    assert full.returncode == 0, output[-3000:]
    assert re.search(r"Only \d+\.\d MB free in .*checkpoints: 4 checkpoints of about", output), output[-3000:]
    _assert_made_room(output, tmp_path / "checkpoints", checkpoint_size)

    resumed = run(fit_args(*QUIET, "--resume", "--trainer.max_epochs", "4"), tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed_step(resumed.stdout + resumed.stderr) == 96
    assert read_manifest(tmp_path / "checkpoints").newest_first()[0].global_step == 128


def test_a_folder_too_small_for_one_checkpoint_is_not_safe_and_says_so(tmp_path, checkpoint_size):
    quota = quota_config(tmp_path, checkpoint_size // 2)
    result = run(fit_args(*QUIET, "--config", str(quota)), tmp_path, cli_env(tmp_path / "home"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]  # training is never crashed by a full disk
    folder = tmp_path / "checkpoints"
    not_saved = [x for x in output.splitlines() if x.startswith(f"disk full in {folder} (") and x.endswith("NOT saved")]
    assert len(not_saved) == 3, output[-3000:]  # one warning per save
    last = output.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"Final training state \(step 96\) NOT saved: disk full in {re.escape(str(folder))} \(\d+\.\d MB free, a "
        r"checkpoint needs \d+\.\d MB\); work since the start would be lost",
        last,
    ), last
    assert "Final checkpoint" not in output
    manifest = read_manifest(folder)
    assert not list(folder.glob(CHECKPOINT_GLOB)) and (manifest is None or not manifest.entries)


@contextlib.contextmanager
def _tmpfs(path: Path, size: int):
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or mounted.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_small_filesystem(tmp_path, checkpoint_size):
    """torch's own writer on a disk that is really full: its error never says "space"."""
    with _tmpfs(tmp_path / "small", int(2.6 * checkpoint_size)) as small:
        folder = small / "checkpoints"
        flags = ("--checkpoint.dirpath", str(folder))
        result = run(fit_args(*QUIET, *flags), tmp_path, cli_env(tmp_path / "home"))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        _assert_made_room(output, folder, checkpoint_size)
        resumed = run(
            fit_args(*QUIET, *flags, "--resume", "--trainer.max_epochs", "4"), tmp_path, cli_env(tmp_path / "h")
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert resumed_step(resumed.stdout + resumed.stderr) == 96
