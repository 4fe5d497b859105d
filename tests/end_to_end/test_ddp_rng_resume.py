"""DDP killed mid-epoch and resumed: each rank draws its own random numbers, a killed and resumed 2-process run must
give every rank its own RNG state back, and end bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from lightning_app.persistence.folder import read_manifest
from tests.cli_helpers import (
    RESUME_FLAGS,
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    run_in_group,
)

pytestmark = pytest.mark.slow


# 2 ranks x 16 sequences (smoke.yaml's 8 is per canonical micro-batch of a one-device run): 16 steps per epoch.
DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "16")


def _ddp_run(work: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_in_group(fit_args(*RESUME_FLAGS, *DDP, *extra), work, cli_env(work / "home"))  # a new session


def _callbacks_config(folder: Path, *callbacks: dict) -> Path:
    path = folder / "callbacks.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": list(callbacks)}}))
    return path


DRAW = {"class_path": "tests.support.rank_draws.DrawPerRank"}
KILL = {"class_path": "tests.support.kill_switch.KillAfterCheckpoint", "init_args": {"global_step": 20}}


def test_ddp_ranks_on_different_streams_resume_to_the_same_weights(tmp_path):
    reference, work = tmp_path / "uninterrupted", tmp_path / "killed"
    reference.mkdir(), work.mkdir()
    done = _ddp_run(reference, "--config", str(_callbacks_config(reference, DRAW)))
    assert done.returncode == 0, done.stdout[-3000:]
    killed = _ddp_run(work, "--config", str(_callbacks_config(work, DRAW, KILL)))
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    assert max(e.global_step for e in read_manifest(work / "checkpoints").entries.values()) == 20
    resumed = _ddp_run(work, "--resume", "--config", str(_callbacks_config(work, DRAW)))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "(epoch 1, step 20)" in resumed.stdout  # 16 steps per epoch per rank: mid-epoch
    assert "RNG state:" not in resumed.stdout  # both ranks found their own state
    saved = load(newest_checkpoint(work / "checkpoints"))
    assert_same_training_state(saved, load(newest_checkpoint(reference / "checkpoints")))
    assert sorted(saved["rng_states"]["per_rank"]) == [0, 1]
