"""`--checkpoint.monitor`: the best checkpoint survives retention, is marked in the manifest, and is `best`."""

from __future__ import annotations

import pytest

from lightning_app.persistence.manifest import Manifest
from tests.cli_helpers import cli_env, fit_args, run

pytestmark = pytest.mark.slow


def test_the_best_checkpoint_is_kept_marked_and_is_what_ckpt_path_best_loads(tmp_path):
    env = cli_env(tmp_path / "home")
    # mode max: the *highest* val_loss is "best", i.e. the first epoch's, which keep_last 1 alone would delete.
    flags = ("--checkpoint.monitor", "val_loss", "--checkpoint.mode", "max", "--checkpoint.keep_last", "1")
    trained = run(fit_args(*flags), tmp_path, env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    entries = Manifest.load(tmp_path / "checkpoints").newest_first()
    assert len(entries) == 2, [e.file for e in entries]
    newest, best = entries
    assert best.best and not newest.best
    assert best.metrics["val_loss"] > newest.metrics["val_loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("kaggle_epoch_*.ckpt")) == sorted(
        [best.file, newest.file]
    )

    validated = run([*fit_args()[:3], "validate", "--config", fit_args()[5], "--ckpt_path", "best"], tmp_path, env)
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert best.file in validated.stdout + validated.stderr


def test_ckpt_path_best_without_a_best_checkpoint_is_one_line(tmp_path):
    env = cli_env(tmp_path / "home")
    result = run([*fit_args()[:3], "validate", "--config", fit_args()[5], "--ckpt_path", "best"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --ckpt_path: got 'best'; expected a checkpoint")
