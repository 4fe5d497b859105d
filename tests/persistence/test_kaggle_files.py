"""``download_file`` (one file of a version) through its child process and the real ``kaggle`` client.

Run in a kaggle 1.8 venv too: 1.8 cannot unwrap a file that arrives as ``<name>.zip``, nor retry a cut-off
download; the product does the first for both and reports the second as transient.
"""

from __future__ import annotations

import inspect
import os

import pytest

from lightning_app.persistence.kaggle.operations import download_file as op_download_file
from lightning_app.persistence.kaggle.outcomes import CallFailed as Failure
from lightning_app.persistence.kaggle.store import DownloadedFile, KaggleDatasetStore
from lightning_app.persistence.store import AuthError, NoSpaceError, NotFoundError, StoreError, TransientError

REF = "fake-user/lm-checkpoints"
CKPT = os.urandom(6000)
MANIFEST = b'{"format": 1}'


@pytest.fixture
def dataset(fake_kaggle, kaggle_env):
    """Two versions: v1 holds an older checkpoint, v2 (the newest) this one and a small manifest."""
    fake_kaggle.add_dataset(REF, "LM checkpoints", {"kaggle_epoch_0.ckpt": b"old" * 500})
    fake_kaggle.add_version(REF, {"kaggle_epoch_1.ckpt": CKPT, "manifest.json": MANIFEST}, "epoch 1")


def download_file(ref: str, name: str, folder, *, expected_size=None, call_timeout=120.0) -> DownloadedFile:
    """`KaggleDatasetStore.download` of ``owner/slug`` (the newest ready version) or ``owner/slug/N``."""
    owner, slug, *version = ref.split("/")
    store = KaggleDatasetStore(f"{owner}/{slug}", call_timeout=call_timeout)
    return store.download(name, folder, int(version[0]) if version else None, expected_size)


def _retries_cut_downloads() -> bool:
    from kaggle.api.kaggle_api_extended import KaggleApi

    return "max_retries" in inspect.signature(KaggleApi.download_file).parameters  # kaggle 2.x


def test_a_file_arrives_plain_or_wrapped_and_ends_plain(dataset, fake_kaggle, tmp_path):
    folder = tmp_path / "ckpt" / ".restore"
    got = download_file(REF, "manifest.json", folder, expected_size=len(MANIFEST), call_timeout=30)
    assert got == DownloadedFile(folder / "manifest.json", len(MANIFEST), False, len(MANIFEST))
    assert got.path.read_bytes() == MANIFEST

    fake_kaggle.wrap_files_above(1000)
    got = download_file(REF, "kaggle_epoch_1.ckpt", folder, expected_size=len(CKPT), call_timeout=30)
    assert got.path == folder / "kaggle_epoch_1.ckpt" and got.path.read_bytes() == CKPT
    assert got.wrapped and len(CKPT) < got.peak_bytes <= 2 * len(CKPT) + 1000  # the zip and the file, at once
    assert sorted(p.name for p in folder.iterdir()) == ["kaggle_epoch_1.ckpt", "manifest.json"]  # no scratch left

    old = download_file(f"{REF}/1", "kaggle_epoch_0.ckpt", folder, call_timeout=30)
    assert old.path.read_bytes() == b"old" * 500 and old.wrapped


def test_a_file_already_there_is_replaced(dataset, tmp_path):
    folder = tmp_path / "restore"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b"a stale, longer manifest from an earlier attempt")
    download_file(REF, "manifest.json", folder, call_timeout=30)
    assert (folder / "manifest.json").read_bytes() == MANIFEST


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", TransientError), ("drop", TransientError), ("429", TransientError), ("401", AuthError)],
)
def test_failures_are_classified(dataset, fake_kaggle, tmp_path, fault, error):
    if fault == "drop":
        fake_kaggle.drop_next(1, methods="DownloadDataset")
    elif fault == "401":
        fake_kaggle.refuse_credentials()
    else:
        fake_kaggle.fail_next(1, int(fault), "DownloadDataset", retry_after=5 if fault == "429" else None)
    with pytest.raises(error) as caught:
        download_file(REF, "manifest.json", tmp_path / "restore", call_timeout=30)
    assert fake_kaggle.key not in str(caught.value)
    if fault == "429":
        assert caught.value.retry_after == 5.0
    assert not (tmp_path / "restore" / "manifest.json").exists()


def test_missing_things_are_not_found(dataset, tmp_path):
    for ref, name in ((REF, "kaggle_epoch_0.ckpt"), (f"{REF}/9", "manifest.json"), ("fake-user/no-such-set", "x")):
        with pytest.raises(NotFoundError):
            download_file(ref, name, tmp_path / "restore", call_timeout=30)


def test_a_download_cut_off_midway(dataset, fake_kaggle, tmp_path):
    fake_kaggle.cut_next(1, methods="GET")
    folder = tmp_path / "restore"
    if _retries_cut_downloads():  # kaggle 2.x asks again for the rest itself (after a 2-3 s pause)
        got = download_file(REF, "kaggle_epoch_1.ckpt", folder, expected_size=len(CKPT), call_timeout=30)
        assert got.path.read_bytes() == CKPT and len(fake_kaggle.calls("GET")) == 2
    else:
        with pytest.raises(TransientError, match="IncompleteRead"):
            download_file(REF, "kaggle_epoch_1.ckpt", folder, expected_size=len(CKPT), call_timeout=30)
        assert list(folder.iterdir()) == []  # no partial file left behind


def test_no_room_is_said_before_downloading(dataset, fake_kaggle, tmp_path):
    with pytest.raises(NoSpaceError, match="MB free, it needs"):
        download_file(REF, "kaggle_epoch_1.ckpt", tmp_path / "restore", expected_size=1 << 60, call_timeout=30)
    assert not fake_kaggle.calls("DownloadDataset")


def test_the_name_must_be_a_file_of_the_version(api, dataset, tmp_path):
    for name in ("../escape", "sub/file", ""):
        with pytest.raises(Failure, match="not the name of a file"):
            op_download_file(api, {"ref": REF, "name": name, "path": str(tmp_path)})
    with pytest.raises(StoreError):  # the wrong size is never handed on
        download_file(REF, "manifest.json", tmp_path / "restore", expected_size=len(MANIFEST) + 1, call_timeout=30)
    assert not (tmp_path / "restore" / "manifest.json").exists()
