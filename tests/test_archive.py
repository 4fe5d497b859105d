"""safe_extract refuses members that would land outside the destination, and extracts nothing then."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from lightning_app.persistence.archive import safe_extract
from lightning_app.persistence.store_protocol import StoreError


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


def _tar(path, add):
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def _file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_extracts_a_normal_tar(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", lambda t: _file(t, "dir/a.bin", b"abc"))
    assert [p.name for p in safe_extract(archive, tmp_path / "out")] == ["a.bin"]
    assert (tmp_path / "out" / "dir" / "a.bin").read_bytes() == b"abc"


def test_refuses_tar_links_and_escapes(tmp_path):
    def add_link(archive):
        link = tarfile.TarInfo("innocent")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)

    with pytest.raises(StoreError, match="'innocent' is a link"):
        safe_extract(_tar(tmp_path / "link.tar.gz", add_link), tmp_path / "out")
    with pytest.raises(StoreError, match="outside"):
        safe_extract(_tar(tmp_path / "up.tar.gz", lambda t: _file(t, "../up", b"x")), tmp_path / "out")
    assert not (tmp_path / "up").exists()


def test_refuses_what_is_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip at all")
    with pytest.raises(StoreError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")
