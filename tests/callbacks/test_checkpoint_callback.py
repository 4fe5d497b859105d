"""KaggleModelCheckpoint with a real Trainer: names, uniqueness, retention, manifest, listeners, failures."""

from __future__ import annotations

import errno
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel
from lightning_app.persistence import snapshot
from lightning_app.persistence.folder import parse_checkpoint_name, read_manifest, sha256_of

NAME = re.compile(r"^kaggle_epoch_(\d+)_(\d{8}-\d{6})(-\d{2})?\.ckpt$")


def _fit(tmp_path: Path, checkpoint: KaggleModelCheckpoint, epochs: int = 2) -> pl.Trainer:
    pl.seed_everything(7)
    model = LanguageModel(pe_type="rope", model_size="tiny", vocab_size=16, d_model=32, n_layers=1, warmup_steps=2)
    # 2 canonical ranks (the default) x batch 4: 8 sequences per step, 8 steps per epoch.
    data = SyntheticDataModule(vocab_size=16, seq_len=16, batch_size=4, num_train_sequences=64, num_val_sequences=16)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    return trainer


def test_names_manifest_and_retention(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    foreign = folder / "kaggle_epoch_99_20200101-000000.ckpt"  # our naming, not ours: never deleted
    foreign.write_bytes(b"not ours")
    seen: list[SavedCheckpoint] = []
    checkpoint = KaggleModelCheckpoint(dirpath=str(folder), keep_last=2, every_n_train_steps=3)
    checkpoint.add_listener(lambda saved: seen.append(saved) or _assert_complete(saved))
    _fit(tmp_path, checkpoint, epochs=2)  # 8 steps per epoch: saves at 3, 6, 8 (epoch end), 9, 12, 15, 16

    assert [s.entry.global_step for s in seen] == [3, 6, 8, 9, 12, 15, 16]
    assert [s.entry.end_of_epoch for s in seen] == [False, False, True, False, False, False, True]
    manifest = read_manifest(folder)
    kept = manifest.newest_first()
    assert [e.global_step for e in kept] == [16, 15]
    on_disk = sorted(p.name for p in folder.glob("kaggle_epoch_*.ckpt"))
    assert on_disk == sorted([e.file for e in kept] + [foreign.name])
    assert (folder / "notes.txt").read_text() == "mine"
    for entry in kept:
        match = NAME.match(entry.file)
        assert match and int(match[1]) == entry.epoch == 1
        stamp = datetime.strptime(match[2], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 600  # UTC, not local time
        path = folder / entry.file
        assert entry.size == path.stat().st_size and entry.sha256 == sha256_of(path)
        assert entry.settings["pe_type"] == "rope" and entry.settings["vocab_size"] == 16
        ckpt = torch.load(path, weights_only=True)  # everything in it is plain types and tensors
        assert ckpt["global_step"] == entry.global_step
        assert "rng_states" in ckpt and ckpt["callbacks"]
    assert kept[0].end_of_epoch and "val_loss" in kept[0].metrics
    assert not list(folder.glob(".*.tmp"))


def _assert_complete(saved: SavedCheckpoint) -> None:
    # A listener runs after the file is complete and the manifest lists it.
    assert saved.path.is_file() and sha256_of(saved.path) == saved.entry.sha256
    assert saved.entry.file in read_manifest(saved.folder.path).entries


def test_names_are_unique_within_one_second_and_never_reused(tmp_path, monkeypatch):
    import lightning_app.persistence.folder as module
    from lightning_app.persistence.folder import CheckpointFolder
    from lightning_app.persistence.manifest import CheckpointEntry

    class _FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 26, 3, 15, 0, tzinfo=timezone.utc)

    monkeypatch.setattr(module, "datetime", _FrozenClock)
    folder = CheckpointFolder(tmp_path)
    names = []
    for step in range(3):
        name = folder.next_name(4)
        (tmp_path / name).write_bytes(b"x")
        folder.record(CheckpointEntry(name, 4, step, CheckpointFolder.timestamp_of(name), run_id="r"), keep_last=1)
        names.append(name)
    assert names == [
        "kaggle_epoch_4_20261126-031500.ckpt",
        "kaggle_epoch_4_20261126-031500-01.ckpt",
        "kaggle_epoch_4_20261126-031500-02.ckpt",
    ]
    assert not (tmp_path / names[0]).exists(), "retention deleted the oldest"
    assert folder.next_name(4) == "kaggle_epoch_4_20261126-031500-03.ckpt", "a deleted checkpoint's name came back"
    stamps = [parse_checkpoint_name(n)[1] for n in names]
    assert sorted(stamps) == stamps  # the manifest's timestamp field still sorts in save order


def test_a_failed_write_is_reported_and_training_goes_on(tmp_path, monkeypatch, caplog):
    real = snapshot.write_atomically
    calls = {"n": 0}

    def flaky(state, path):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")  # not a full disk: nothing to make room for
        return real(state, path)

    monkeypatch.setattr(snapshot, "write_atomically", flaky)
    checkpoint = KaggleModelCheckpoint(dirpath=str(tmp_path / "ckpt"), keep_last=None)
    with caplog.at_level(logging.WARNING, logger="lightning_app.checkpoint"):
        trainer = _fit(tmp_path, checkpoint, epochs=2)
    assert trainer.current_epoch == 2
    assert "Input/output error" in caplog.text and "training continues" in caplog.text
    assert [e.epoch for e in read_manifest(tmp_path / "ckpt").newest_first()] == [1]


@pytest.mark.parametrize("bad", [{"keep_last": 0}, {"every_n_train_steps": 0}, {"train_time_interval": "-5s"}])
def test_bad_arguments_name_the_flag(bad):
    from lightning_app.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--checkpoint\." + next(iter(bad))):
        KaggleModelCheckpoint(**bad)
