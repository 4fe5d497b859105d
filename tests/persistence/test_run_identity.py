"""Run identity in the manifest and in restore's choice: names never reused, runs kept apart, a run picked."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from lightning_app.errors import ConfigError
from lightning_app.persistence.folder import CheckpointFolder, read_manifest, sha256_of, write_manifest
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.restore import RestoreOptions, collect, restore_newest

SETTINGS = {"pe_type": "rope", "model_size": "tiny", "vocab_size": 32}
NOWHERE = RestoreOptions(input_dir="/nonexistent-input")


def make_checkpoint(folder: Path, step: int, stamp: str, run_id: str, settings: dict = SETTINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kaggle_epoch_0_{stamp}.ckpt"
    torch.save({"global_step": step, "callbacks": {"KaggleModelCheckpoint": {"run_id": run_id}}}, path)
    manifest = read_manifest(folder) or Manifest()
    manifest.add(
        CheckpointEntry(
            path.name, 0, step, stamp, path.stat().st_size, sha256_of(path), run_id=run_id, settings=settings
        )
    )
    write_manifest(folder, manifest)
    return path


def test_a_retired_name_is_remembered_across_loads(tmp_path):
    manifest = Manifest([CheckpointEntry("kaggle_epoch_0_20261202-180329.ckpt", 0, 3, "20261202-180329")])
    manifest.discard("kaggle_epoch_0_20261202-180329.ckpt")
    write_manifest(tmp_path, manifest)
    reloaded = read_manifest(tmp_path)
    assert not reloaded.entries
    assert reloaded.ever_held("kaggle_epoch_0_20261202-180329.ckpt")


def test_newest_first_of_one_run_leaves_the_others_out():
    manifest = Manifest(
        [
            CheckpointEntry("a.ckpt", 0, 30, "20261202-100000", run_id="old"),
            CheckpointEntry("b.ckpt", 0, 3, "20261202-110000", run_id="new"),
            CheckpointEntry("c.ckpt", 0, 6, "20261202-110005", run_id="new"),
        ]
    )
    assert [e.file for e in manifest.newest_first("new")] == ["c.ckpt", "b.ckpt"]
    assert [e.file for e in manifest.newest_first()] == ["c.ckpt", "b.ckpt", "a.ckpt"]


def test_within_one_second_the_checkpoint_written_later_is_newer_whatever_its_step():
    """Two runs that each checkpoint in the same second (a test's back-to-back runs): ``written_at`` decides, not
    the higher step; an entry from before ``written_at`` counts from its name's second."""
    second = "20261202-110000"
    longer = CheckpointEntry("kaggle_epoch_0_20261202-110000.ckpt", 0, 20, second, written_at=1796209200.25)
    recent = CheckpointEntry("kaggle_epoch_0_20261202-110000-01.ckpt", 0, 10, second, written_at=1796209200.75)
    older_format = CheckpointEntry("kaggle_epoch_0_20261202-105959.ckpt", 0, 30, "20261202-105959")
    assert older_format.written == recent.written - 0.75 - 1  # 11:00:00 UTC on 2026-12-02 is 1796209200
    newest = Manifest([longer, recent, older_format]).newest_first()
    assert [e.global_step for e in newest] == [10, 20, 30]
    assert CheckpointEntry("x.ckpt", 0, 1, "not-a-stamp").written == 0.0


def test_resume_takes_the_run_checkpointed_most_recently_not_the_highest_step(tmp_path, caplog):
    make_checkpoint(tmp_path / "work", 96, "20261202-100000", "long")
    make_checkpoint(tmp_path / "work", 10, "20261202-110000", "recent")
    with caplog.at_level(logging.INFO, logger="lightning_app.restore"):
        chosen, local = restore_newest(tmp_path / "work", NOWHERE, None, dict(SETTINGS))
    assert chosen.entry.run_id == "recent" and chosen.entry.global_step == 10
    assert any("Left alone: run long" in r.getMessage() for r in caplog.records)


def test_restore_run_picks_a_run_and_an_unknown_one_is_one_line(tmp_path):
    make_checkpoint(tmp_path, 96, "20261202-100000", "long")
    make_checkpoint(tmp_path, 10, "20261202-110000", "recent")
    options = RestoreOptions(input_dir="/nonexistent-input", run="long")
    assert collect(tmp_path, options).chosen.entry.global_step == 96
    with pytest.raises(ConfigError, match=r"--restore.run: got 'nope'; expected one of the runs found: long, recent"):
        collect(tmp_path, RestoreOptions(input_dir="/nonexistent-input", run="nope"))


def test_only_runs_of_this_architecture_compete(tmp_path):
    make_checkpoint(tmp_path, 10, "20261202-100000", "rope-run")
    make_checkpoint(tmp_path, 20, "20261202-110000", "alibi-run", settings={**SETTINGS, "pe_type": "alibi"})
    assert collect(tmp_path, NOWHERE, settings=dict(SETTINGS)).chosen.entry.run_id == "rope-run"
    with pytest.raises(ConfigError, match="made for another model"):
        restore_newest(tmp_path, NOWHERE, None, {**SETTINGS, "pe_type": "learned"})


def test_a_file_without_a_manifest_is_placed_in_its_run(tmp_path):
    path = make_checkpoint(tmp_path, 10, "20261202-100000", "orphan")
    (tmp_path / "manifest.json").unlink()
    chosen = collect(tmp_path, NOWHERE).chosen
    assert chosen.path == path and chosen.entry.run_id == "orphan"


def test_leftovers_of_a_killed_run_are_removed_and_an_orphan_is_adopted(tmp_path):
    kept = make_checkpoint(tmp_path, 10, "20261202-100000", "run")
    orphan = make_checkpoint(tmp_path, 20, "20261202-100100", "run")
    manifest = read_manifest(tmp_path)
    manifest.entries.pop(orphan.name)  # renamed into place, then killed before the manifest was written
    write_manifest(tmp_path, manifest)
    staged = tmp_path / ".staging" / "kaggle_epoch_0_20261202-090000-1a2b3c4d"
    staged.mkdir(parents=True)
    (staged / "deleted.ckpt").write_bytes(b"x" * 1000)  # the only link left to a checkpoint retention deleted
    os.link(kept, staged / kept.name)  # a link to a checkpoint that is still there: frees nothing
    (tmp_path / f".{kept.name}.tmp").write_bytes(b"y" * 300)
    (tmp_path / f".{kept.name}.k3j4h5").write_bytes(b"z" * 200)
    being_written = tmp_path / ".kaggle_epoch_1_20261202-090500.ckpt.tmp"  # torch's writer, killed mid-file
    being_written.mkdir()
    (being_written / "archive").write_bytes(b"w" * 400)
    (tmp_path / "notes.txt").write_text("mine")

    cleanup = CheckpointFolder(tmp_path).clean()
    removed = [".staging", f".{kept.name}.tmp", f".{kept.name}.k3j4h5", being_written.name]
    assert sorted(p.name for p in cleanup.removed) == sorted(removed)
    assert cleanup.freed_bytes == 1900
    assert cleanup.adopted == [orphan.name]
    assert read_manifest(tmp_path).entries[orphan.name].sha256 == sha256_of(orphan)
    assert read_manifest(tmp_path).entries[orphan.name].run_id == "run"
    assert kept.is_file() and (tmp_path / "notes.txt").is_file()
    assert "1.5 MB" not in cleanup.describe() and "0.0 MB freed" in cleanup.describe()
    assert CheckpointFolder(tmp_path).clean().describe() == ""


def test_training_differences_name_each_changed_setting():
    from lightning_app.persistence.manifest import training_differences

    saved = {"model.lr": 0.0003, "data.batch_size": 8, "seed": "42"}
    assert training_differences(saved, {**saved, "model.lr": 0.001, "new": 1}) == "model.lr 0.0003 -> 0.001"
    assert training_differences(saved, saved) == ""
