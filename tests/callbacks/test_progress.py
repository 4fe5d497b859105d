"""The progress bar shows the sync state and the session's remaining time, read duck-typed from callbacks."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar

from callbacks.progress_bar import (
    KAGGLE_REFRESH_RATE,
    SyncProgressBar,
    format_remaining,
    session_items,
    use_sync_progress_bar,
)
from tests.support.tiny_regression import TinyRegression


class FakeSync(Callback):
    def __init__(self, text: str = "v3@96 uploading step 128") -> None:
        self.text = text

    @property
    def state(self) -> SimpleNamespace:  # what the bar reads of KaggleDatasetSync.state
        return SimpleNamespace(bar_text=self.text)


class FakeDeadline(Callback):
    def __init__(self, seconds: float | None = 3725.0) -> None:
        self.seconds = seconds

    def remaining_seconds(self) -> float | None:
        return self.seconds


class Broken(Callback):
    def status(self) -> str:
        raise RuntimeError("boom")

    def remaining_seconds(self) -> float:
        raise RuntimeError("boom")


class Recorder(Callback):
    """Asks the progress bar what it would show, as it does after each training batch."""

    def __init__(self) -> None:
        self.shown: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.shown.append(trainer.progress_bar_callback.get_metrics(trainer, pl_module))


def _trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        **kwargs,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(8 * 3600 + 41 * 60 + 5, "8h41m"), (725, "12m05s"), (45.9, "45s"), (0, "0s"), (-30, "0s")],
)
def test_format_remaining(seconds, text):
    assert format_remaining(seconds) == text


def test_a_real_fit_shows_sync_state_and_time_left(tmp_path):
    recorder = Recorder()
    trainer = _trainer(tmp_path, [Broken(), FakeSync(), FakeDeadline(), recorder])
    assert use_sync_progress_bar(trainer)
    assert type(trainer.progress_bar_callback) is SyncProgressBar
    trainer.fit(TinyRegression())
    shown = recorder.shown[-1]
    assert shown["sync"] == "v3@96 uploading step 128"
    assert shown["left"] == "1h02m"
    assert "train_loss" not in shown  # not logged with prog_bar=True by this model; the bar's own items remain
    assert "v_num" not in shown, "the experiment name is too long for the bar"


def test_nothing_is_shown_without_providers():
    class Trainer:
        callbacks = [FakeSync(""), FakeDeadline(None), Broken(), Callback()]

    assert session_items(Trainer()) == {}


def test_only_lightnings_default_bars_are_replaced(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert not use_sync_progress_bar(_trainer(tmp_path, [], enable_progress_bar=False))

    class Mine(TQDMProgressBar):
        pass

    custom = _trainer(tmp_path, [Mine()])
    assert not use_sync_progress_bar(custom)
    assert type(custom.progress_bar_callback) is Mine

    tqdm = _trainer(tmp_path, [TQDMProgressBar(refresh_rate=5)])
    use_sync_progress_bar(tqdm)
    assert tqdm.progress_bar_callback.refresh_rate == 5
    assert sum(isinstance(cb, TQDMProgressBar) for cb in tqdm.callbacks) == 1


@pytest.mark.skipif(importlib.util.find_spec("rich") is None, reason="rich is not installed")
def test_lightnings_rich_default_is_replaced_too(tmp_path):
    rich = _trainer(tmp_path, [RichProgressBar()])
    assert use_sync_progress_bar(rich)
    assert type(rich.progress_bar_callback) is SyncProgressBar


def test_inside_a_kaggle_notebook_the_bar_refreshes_less_often(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    trainer = _trainer(tmp_path, [TQDMProgressBar()])
    use_sync_progress_bar(trainer)
    assert trainer.progress_bar_callback.refresh_rate == KAGGLE_REFRESH_RATE
