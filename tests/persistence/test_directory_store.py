"""DirectoryStore: versions as root/v<N>/ folders, written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightning_app.persistence.directory_store import NOTES_NAME, DirectoryStore
from lightning_app.persistence.store import (
    CheckpointStore,
    NotFoundError,
    RemoteFile,
    StoreError,
    TransientError,
)


def _stage(root: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    return folder


def test_publish_list_fetch(tmp_path):
    store = DirectoryStore(tmp_path / "drive" / "ckpts")
    assert isinstance(store, CheckpointStore) and store.description == f"dir:{tmp_path / 'drive' / 'ckpts'}"
    with pytest.raises(NotFoundError):
        store.list_files()
    with pytest.raises(NotFoundError):
        store.fetch(tmp_path / "nothing")

    one = _stage(tmp_path, "one", {"a.ckpt": b"1" * 10, "manifest.json": b"{}"})
    (one / "subfolder").mkdir()
    first = store.publish(one, "epoch 0")
    assert first.number == 1 and first.bytes_sent == 12
    assert first.files == (RemoteFile("a.ckpt", 10), RemoteFile("manifest.json", 2))

    second = store.publish(_stage(tmp_path, "two", {"b.ckpt": b"2" * 5}), "epoch 1")
    assert second.number == 2 and store.versions() == [1, 2]
    assert store.list_files() == [RemoteFile("b.ckpt", 5)]  # nothing carried over
    assert store.list_files(1) == list(first.files)
    notes = [(tmp_path / "drive" / "ckpts" / f"v{n}" / NOTES_NAME).read_text() for n in (1, 2)]
    assert notes == ["epoch 0", "epoch 1"]

    dest = store.fetch(tmp_path / "restore" / "here", 1)
    assert sorted(p.name for p in dest.iterdir()) == ["a.ckpt", "manifest.json"]
    assert (dest / "a.ckpt").read_bytes() == b"1" * 10
    with pytest.raises(NotFoundError, match="no version 7"):
        store.list_files(7)
    assert sorted(p.name for p in store.root.iterdir()) == ["v1", "v2"]  # no staging leftovers


def test_a_failed_publish_leaves_no_version(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path / "store")
    store.publish(_stage(tmp_path, "one", {"a": b"1"}), "one")

    def broken_rename(*args):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(TransientError, match="disk went away"):
        store.publish(_stage(tmp_path, "two", {"b": b"2"}), "two")
    monkeypatch.undo()
    assert store.versions() == [1] and sorted(p.name for p in store.root.iterdir()) == ["v1"]


def test_a_racing_publisher_pushes_to_the_next_number(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path / "store")
    real_rename = os.rename

    def rename_after_a_rival(src, dst):
        if Path(dst).name == "v1" and not Path(dst).exists():
            (Path(dst) / "rival").mkdir(parents=True)  # another process claimed v1 first
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_after_a_rival)
    assert store.publish(_stage(tmp_path, "one", {"a": b"1"}), "one").number == 2


def test_refuses_empty_or_missing_folders(tmp_path):
    store = DirectoryStore(tmp_path / "store")
    with pytest.raises(StoreError, match="nothing to publish"):
        store.publish(_stage(tmp_path, "empty", {}), "x")
    with pytest.raises(StoreError, match="not a folder"):
        store.publish(tmp_path / "missing", "x")
