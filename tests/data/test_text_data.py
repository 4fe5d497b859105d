"""TextDataModule: file, folder and glob inputs, window and split sizes, memory mapping, the concatenation cache
and one-line errors that name the flag."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from lightning_app.data import TextDataModule
from lightning_app.errors import ConfigError

TEXT = bytes(range(256)) * 3 + b"the end"  # 775 bytes


def _module(path, tmp_path, **kwargs) -> TextDataModule:
    # One canonical rank: a batch is one device's 4 windows (tests/data/test_canonical.py covers the default 2).
    settings = {"seq_len": 16, "batch_size": 4, "val_fraction": 0.1, "num_workers": 0, "canonical_ranks": 1}
    return TextDataModule(str(path), cache_dir=str(tmp_path / "cache"), **{**settings, **kwargs})


def _corpus(tmp_path):
    """Files a.txt, sub/b.txt and sub/c.md, plus hidden entries that must be skipped."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    parts = {"a.txt": b"alpha " * 40, "sub/b.txt": b"bravo " * 40, "sub/c.md": b"charlie " * 40}
    for name, data in parts.items():
        (root / name).write_bytes(data)
    (root / ".hidden.txt").write_bytes(b"HIDDEN" * 50)
    (root / ".git" / "config").write_bytes(b"GIT" * 50)
    return root, b"".join(parts[name] for name in sorted(parts))


def test_single_file_is_memory_mapped_in_place_and_split_into_windows(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(TEXT)
    dm = _module(path, tmp_path)
    windows = (len(TEXT) - 1) // 16  # 48
    assert (dm.num_train_windows, dm.num_val_windows) == (windows - 4, 4)
    assert len(dm.train_dataset) + len(dm.val_dataset) == windows
    assert dm.tokens_path == path.resolve() and not (tmp_path / "cache").exists()
    assert isinstance(dm.train_dataset.tokens, np.memmap)
    x, y = dm.train_dataset[2]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (16,)
    assert bytes(x.tolist()) == TEXT[32:48] and bytes(y.tolist()) == TEXT[33:49]
    first_val, _ = dm.val_dataset[0]
    assert bytes(first_val.tolist()) == TEXT[(windows - 4) * 16 : (windows - 3) * 16]  # the tail, after train
    assert dm.vocab_size == 256
    assert dm.num_train_batches() == len(dm.train_dataloader()) == (windows - 4) // 4


def test_folder_is_read_recursively_sorted_without_hidden_files_into_a_cache(tmp_path):
    root, expected = _corpus(tmp_path)
    dm = _module(root, tmp_path)
    assert [p.name for p in dm.files] == ["a.txt", "b.txt", "c.md"]
    assert dm.num_tokens == len(expected)
    dm.prepare_data()
    assert dm.tokens_path.parent == tmp_path / "cache" and dm.tokens_path.read_bytes() == expected
    assert isinstance(dm.train_dataset.tokens, np.memmap)
    assert bytes(dm.train_dataset[1][0].tolist()) == expected[16:32]
    assert os.listdir(tmp_path / "cache") == [dm.tokens_path.name]  # no temporary file left behind


def test_glob_selects_the_matching_files(tmp_path):
    root, _ = _corpus(tmp_path)
    dm = _module(root / "**" / "*.txt", tmp_path)
    assert [p.name for p in dm.files] == ["a.txt", "b.txt"]
    assert bytes(dm.train_dataset[0][0].tolist()) == (b"alpha " * 40)[:16]


def test_cache_is_reused_and_renamed_when_a_file_changes(tmp_path):
    root, _ = _corpus(tmp_path)
    first = _module(root, tmp_path)
    first.setup("fit")
    before = first.tokens_path.stat()
    second = _module(root, tmp_path)
    second.setup("fit")
    assert second.tokens_path == first.tokens_path
    after = second.tokens_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten

    os.utime(root / "a.txt", ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    third = _module(root, tmp_path)
    assert third.tokens_path != first.tokens_path
    assert third.identity() == first.identity()  # modification times do not change what the data is


def test_identity_is_plain_and_resolved(tmp_path, monkeypatch):
    path = tmp_path / "book.txt"
    path.write_bytes(TEXT)
    monkeypatch.chdir(tmp_path)
    identity = _module("book.txt", tmp_path).identity()
    assert identity == {
        "class": "TextDataModule",
        "path": str(path.resolve()),
        "num_bytes": len(TEXT),
        "seq_len": 16,
        "val_fraction": 0.1,
    }
    assert json.loads(json.dumps(identity)) == identity


def test_a_mapped_dataset_pickles_as_its_path_and_loads_in_workers(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(TEXT * 100)
    dm = _module(path, tmp_path, num_workers=2)
    assert len(pickle.dumps(dm.train_dataset)) < 2000  # the 77 KB of text stay on disk
    copy = pickle.loads(pickle.dumps(dm.train_dataset))
    assert torch.equal(copy[5][0], dm.train_dataset[5][0])
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.num_train_batches() and batches[0][0].shape == (4, 16)
    assert sum(len(x) for x, _ in dm.val_dataloader()) == dm.num_val_windows


@pytest.mark.parametrize(
    ("make", "kwargs", "flag", "value", "words"),
    [
        (None, {"path": "{tmp}/missing.txt"}, "--data.path", "{tmp}/missing.txt", "an existing file, folder or glob"),
        (None, {"path": "{tmp}/*.nothing"}, "--data.path", "{tmp}/*.nothing", "found no files"),
        ({"empty.txt": b""}, {"path": "{tmp}/empty.txt"}, "--data.path", "{tmp}/empty.txt", "empty"),
        ({"short.txt": b"x" * 32}, {"path": "{tmp}/short.txt"}, "--data.path", "{tmp}/short.txt", "at least 33 bytes"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "seq_len": 0}, "--data.seq_len", 0, "integer >= 1"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "batch_size": 0}, "--data.batch_size", 0, "integer >= 1"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "batch_size": 45}, "--data.batch_size", 45, "at most 44"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "val_fraction": 0.0}, "--data.val_fraction", 0.0, "(0, 1)"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "val_fraction": 1}, "--data.val_fraction", 1, "(0, 1)"),
        ({"t.txt": TEXT}, {"path": "{tmp}/t.txt", "num_workers": -1}, "--data.num_workers", -1, "integer >= 0"),
    ],
)
def test_bad_settings_fail_at_construction_in_one_line_naming_flag_and_value(
    tmp_path, make, kwargs, flag, value, words
):
    for name, data in (make or {}).items():
        (tmp_path / name).write_bytes(data)
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    value = value.format(tmp=tmp_path) if isinstance(value, str) else value
    path = kwargs.pop("path")
    with pytest.raises(ConfigError) as error:
        _module(path, tmp_path, **kwargs)
    message = str(error.value)
    assert message.startswith(f"{flag}: got {value!r}; expected ") and words in message and "\n" not in message
