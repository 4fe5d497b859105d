"""safe_extract refuses members that would land outside the destination, and extracts nothing then."""

from __future__ import annotations

import zipfile

import pytest

from lightning_app.persistence.kaggle.archive import safe_extract
from lightning_app.persistence.store import StoreError


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def test_extracts_a_normal_zip(tmp_path):
    archive = _zip(tmp_path / "ok.zip", {"a.ckpt": b"1", "sub/b.txt": b"22", "./c": b""})
    written = safe_extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["a.ckpt", "c", "sub/b.txt"]
    assert (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"22"


@pytest.mark.parametrize("evil", ["../evil", "a/../../evil", "/etc/evil", "C:/evil", "..\\evil"])
def test_refuses_zip_slip(tmp_path, evil):
    archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"1", evil: b"x"})
    with pytest.raises(StoreError, match="member") as caught:
        safe_extract(archive, tmp_path / "out" / "deeper")
    assert repr(evil) in str(caught.value)
    assert not (tmp_path / "out" / "deeper" / "fine.txt").exists()  # nothing extracted
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "evil").exists()


def test_refuses_what_is_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip at all")
    with pytest.raises(StoreError, match="cannot unpack x.zip"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")
