"""Default logging: one metrics.csv per experiment continued across resumes, the LR and the training clock."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from callbacks.wall_clock import WallClock
from lightning_app import logging_setup
from lightning_app.experiment import WALL_TIME_KEY, experiment_name
from lightning_app.logging_setup import (
    ResumableCSVLogger,
    ResumableTensorBoardLogger,
    add_logging_callbacks,
    default_loggers,
    name_loggers,
)
from tests.support.tiny_regression import SETTINGS, TinyRegression


def _trainer(tmp_path: Path, epochs: int, **kwargs) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=ResumableCSVLogger(save_dir=str(tmp_path / "logs")),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        accelerator="cpu",
    )
    trainer = pl.Trainer(**{**defaults, **kwargs})
    add_logging_callbacks(trainer)
    return trainer


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_resumed_fit_appends_to_the_same_metrics_file(tmp_path):
    model = TinyRegression()
    first = _trainer(tmp_path, epochs=2)
    name = name_loggers(first, model)
    assert name == experiment_name(SETTINGS, {})
    first.fit(model)
    files = list((tmp_path / "logs").rglob("metrics.csv"))
    assert [f.parent.name for f in files] == [name]
    before = _rows(files[0])

    second = _trainer(tmp_path, epochs=3)
    name_loggers(second, TinyRegression())
    second.fit(TinyRegression(), ckpt_path=str(sorted((tmp_path / "ckpt").glob("*.ckpt"))[-1]))

    assert list((tmp_path / "logs").rglob("metrics.csv")) == files, "one file per experiment, across sessions"
    after = _rows(files[0])
    assert after[: len(before)] == before, "the first session's rows are kept, in order"
    appended = after[len(before) :]
    assert min(int(r["step"]) for r in appended if r["train_loss"]) == 8  # 4 steps per epoch, resumed after 2
    clock = [float(r[WALL_TIME_KEY]) for r in after if r[WALL_TIME_KEY]]
    assert len(clock) == 3 and clock == sorted(clock), "wall time once per validation, continuing across sessions"
    lr_columns = [k for k in after[0] if k.startswith("lr-")]
    assert lr_columns and all(any(r[k] for r in appended) for k in lr_columns), "the learning rate is logged"


def test_a_checkpoint_with_the_old_training_clock_state_continues_the_clock(tmp_path):
    first = _trainer(tmp_path, epochs=1)
    first.fit(TinyRegression())
    path = sorted((tmp_path / "ckpt").glob("*.ckpt"))[-1]
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["callbacks"]["WallClock"]
    checkpoint["callbacks"]["TrainingClock"] = {"elapsed": 1000.0}  # what checkpoints held before WallClock
    torch.save(checkpoint, path)

    second = _trainer(tmp_path, epochs=2, logger=ResumableCSVLogger(save_dir=str(tmp_path / "again")))
    second.fit(TinyRegression(), ckpt_path=str(path))
    clock = next(cb for cb in second.callbacks if isinstance(cb, WallClock))
    assert clock.time_elapsed() >= 1000.0
    (metrics,) = (tmp_path / "again").rglob("metrics.csv")
    assert [float(r[WALL_TIME_KEY]) >= 1000.0 for r in _rows(metrics) if r[WALL_TIME_KEY]] == [True]


def test_an_explicit_version_is_kept(tmp_path):
    logger = ResumableCSVLogger(save_dir=str(tmp_path), version="mine")
    logger.name_after("rope-tiny-12345678")
    assert logger.version == "mine"
    unnamed = ResumableCSVLogger(save_dir=str(tmp_path))
    unnamed.name_after("rope-tiny-12345678")
    assert unnamed.log_dir == str(tmp_path / "lm" / "rope-tiny-12345678")


def test_default_loggers_add_tensorboard_only_when_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith("tensorboard") else real(n))
    assert [c["class_path"].rsplit(".", 1)[1] for c in default_loggers()] == ["ResumableCSVLogger"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    names = [c["class_path"].rsplit(".", 1)[1] for c in default_loggers("out")]
    assert names == ["ResumableCSVLogger", "ResumableTensorBoardLogger"]
    assert all(c["init_args"]["save_dir"] == "out" for c in default_loggers("out"))


@pytest.mark.skipif(not logging_setup.tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_logger_is_named_after_the_experiment(tmp_path):
    logger = ResumableTensorBoardLogger(save_dir=str(tmp_path))
    logger.name_after("rope-tiny-12345678")
    assert Path(logger.log_dir) == tmp_path / "tensorboard" / "rope-tiny-12345678"


def test_logging_callbacks_are_added_once_before_the_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    add_logging_callbacks(trainer)  # a second time: nothing more
    kinds = [type(cb) for cb in trainer.callbacks]
    assert kinds.count(LearningRateMonitor) == 1 and kinds.count(WallClock) == 1
    assert kinds.index(WallClock) < kinds.index(ModelCheckpoint)
    own = _trainer(tmp_path, epochs=1, callbacks=[LearningRateMonitor()])
    assert sum(isinstance(cb, LearningRateMonitor) for cb in own.callbacks) == 1


def test_without_a_logger_training_still_runs(tmp_path):
    trainer = _trainer(tmp_path, epochs=1, logger=False)
    assert not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks)
    trainer.fit(TinyRegression())
    assert trainer.global_step == 4
