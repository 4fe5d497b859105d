"""`CheckpointFolder.make_room`: what a full disk may take back, and what it never touches."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from lightning_app.errors import ConfigError
from lightning_app.persistence.directory_store import DirectoryStore
from lightning_app.persistence.folder import CheckpointFolder, out_of_space, read_manifest
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.restore import RestoreOptions, restore_newest

MB = 1_000_000


def _checkpoint(folder: CheckpointFolder, step: int, run_id: str = "run", best: bool = False, size: int = MB) -> str:
    name = f"kaggle_epoch_0_20261206-0000{step:02d}.ckpt"
    (folder.path / name).write_bytes(b"x" * size)
    folder.record(CheckpointEntry(name, 0, step, name[-20:-5], size, run_id=run_id, best=best), keep_last=None)
    return name


def _free(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * MB, 10 * MB - free, free))


def test_room_comes_from_stale_staging_then_this_runs_oldest(tmp_path, monkeypatch):
    folder = CheckpointFolder(tmp_path)
    oldest, best, middle, waiting, newest = (_checkpoint(folder, s, best=s == 2) for s in (1, 2, 3, 4, 5))
    other = _checkpoint(folder, 6, run_id="another-run")
    in_use = folder.stage([folder.manifest.entries[waiting]])  # a version waiting to be published
    stale = folder.stage([folder.manifest.entries[middle]])  # a version nothing uploads any more
    (stale / "metrics.csv").write_bytes(b"m" * 1000)
    stale_manifest = (stale / "manifest.json").stat().st_size
    _free(monkeypatch, 0)
    room = folder.make_room("run", needed=MB // 2, keep={waiting}, staged_in_use={in_use})
    assert not stale.exists() and in_use.is_dir()
    assert room.removed == [oldest], "the oldest went first, and one was enough"
    freed_by_stale = 1000 + stale_manifest  # its link to a checkpoint still in the folder freed nothing
    assert room.freed == MB + freed_by_stale
    kept = {p.name for p in tmp_path.glob("kaggle_epoch_*.ckpt")}
    assert kept == {best, middle, waiting, newest, other} == set(read_manifest(tmp_path).entries)
    room = folder.make_room("run", needed=50 * MB, keep={waiting}, staged_in_use={in_use})
    assert room.removed == [middle], "never the newest, the best, one waiting to be published, nor another run's"
    assert {p.name for p in tmp_path.glob("kaggle_epoch_*.ckpt")} == set(read_manifest(tmp_path).entries)


def test_out_of_space_reads_errno_and_torchs_silent_writer(tmp_path, monkeypatch):
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"), tmp_path, MB)
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path, MB)
    assert not out_of_space(OSError(errno.EIO, "Input/output error"), tmp_path, MB)
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 574848 vs 574740")
    _free(monkeypatch, MB // 2)
    assert out_of_space(torch_says, tmp_path, MB)
    _free(monkeypatch, 2 * MB)
    assert not out_of_space(torch_says, tmp_path, MB), "plenty of room: the writer failed for another reason"


def test_a_resume_whose_checkpoint_does_not_fit_is_one_line(tmp_path, monkeypatch):
    staged = CheckpointFolder(tmp_path / "staged")
    name = _checkpoint(staged, 7)
    (staged.path / ".staging").mkdir(exist_ok=True)
    store = DirectoryStore(tmp_path / "store")
    store.publish(staged.stage([staged.manifest.entries[name]]), "step 7")
    _free(monkeypatch, MB // 2)
    options = RestoreOptions(input_dir=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"^disk full in .*work.*0\.5 MB free, a checkpoint needs 1\.0 MB\)"):
        restore_newest(tmp_path / "work", options, store, {})
    assert not list(Path(tmp_path / "work").glob("kaggle_epoch_*")) and not (tmp_path / "work" / ".remote").exists()
    assert os.listdir(tmp_path / "work") == [".restore.lock"] or not os.listdir(tmp_path / "work")
