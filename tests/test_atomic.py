"""atomic_file: the target holds the old bytes or the new ones, never half, and no temporary is left behind."""

from __future__ import annotations

import pytest

from lightning_app.atomic import atomic_file, write_bytes_atomically


def test_the_new_bytes_replace_the_old_ones_whole(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with atomic_file(target) as f:
        f.write(b"new, ")
        assert target.read_bytes() == b"old"  # nothing visible until the rename
        f.write(b"complete")
    assert target.read_bytes() == b"new, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "cache.bin"
    write_bytes_atomically(target, b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("the disk filled up")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.bin"]
