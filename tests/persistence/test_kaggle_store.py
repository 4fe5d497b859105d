"""KaggleDatasetStore through its child processes and the real ``kaggle`` client, against the fake server."""

from __future__ import annotations

import random

import pytest

from lightning_app.errors import ConfigError
from lightning_app.persistence.kaggle.credentials import find_credentials
from lightning_app.persistence.kaggle.names import METADATA_NAME
from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.retry import retry_call
from lightning_app.persistence.store import (
    AuthError,
    CheckpointStore,
    NotFoundError,
    RefusedError,
    RemoteFile,
    StoreError,
    TransientError,
)

REF = "fake-user/lm-checkpoints"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    """Polls after a create a hundredth of a second apart (the fake counts queries, not seconds)."""
    monkeypatch.setattr(KaggleDatasetStore, "settle_pause", 0.01)


@pytest.fixture
def store(kaggle_env) -> KaggleDatasetStore:
    store = KaggleDatasetStore(REF, title="LM checkpoints", call_timeout=30.0)
    store.poll_interval = 0.05
    return store


def _retry(fn):
    return retry_call(fn, attempts=4, base_delay=0.01, max_delay=0.05, rng=random.Random(0))


def _sizes(files: dict[str, bytes]) -> list[RemoteFile]:
    return [RemoteFile(name, len(data)) for name, data in sorted(files.items())]


def test_publish_list_fetch_round_trip(store, stage, fake_kaggle, tmp_path):
    assert isinstance(store, CheckpointStore) and store.description == f"kaggle:{REF}"
    first = {"kaggle_epoch_0.ckpt": b"a" * 5000, "manifest.json": b'{"format": 1}'}
    published = store.publish(stage("one", first), "epoch 0")
    assert published.number == 1 and published.bytes_sent == 5013 and list(published.files) == _sizes(first)
    dataset = fake_kaggle.datasets[REF]
    assert dataset.is_private and dataset.title == "LM checkpoints" and dataset.license_name == "CC0-1.0"
    assert not (tmp_path / "stage" / "one" / METADATA_NAME).exists()  # read by the client, then removed

    second = {"kaggle_epoch_1.ckpt": b"b" * 7000, "manifest.json": b'{"format": 1, "n": 2}'}
    assert store.publish(stage("two", second), "epoch 1").number == 2
    assert [v.files for v in fake_kaggle.versions(REF)] == [first, second]  # nothing carried over
    assert fake_kaggle.versions(REF)[1].notes == "epoch 1"

    assert store.list_files() == _sizes(second) and store.list_files(1) == _sizes(first)
    for version, files in ((None, second), (1, first)):
        dest = store.fetch(tmp_path / f"restore-{version}", version)
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    assert not list(tmp_path.glob(".kaggle-download-*"))


def test_nothing_published_is_not_found(store, tmp_path):
    with pytest.raises(NotFoundError):
        store.list_files()
    with pytest.raises(NotFoundError):
        store.fetch(tmp_path / "restore")


def test_many_files_are_listed_across_pages(store, stage):
    files = {f"shard-{i:02d}.bin": bytes([i]) * (i + 1) for i in range(23)}
    store.publish(stage("many", files), "many")
    assert store.list_files() == _sizes(files)


def test_retry_after_lost_reply_makes_one_version(store, stage, fake_kaggle):
    store.publish(stage("one", {"a.ckpt": b"1" * 100}), "one")
    folder = stage("two", {"b.ckpt": b"2" * 200})
    fake_kaggle.drop_next(1, methods="CreateDatasetVersion", after_commit=True)
    with pytest.raises(TransientError):
        store.publish(folder, "two")  # the server committed version 2; the reply never came
    again = store.publish(folder, "two")
    assert again.number == 2 and again.bytes_sent == 0
    assert len(fake_kaggle.versions(REF)) == 2
    assert len(fake_kaggle.calls("CreateDatasetVersion")) == 1  # the client's own retry was not used


def test_retry_after_lost_create_reply(store, stage, fake_kaggle):
    fake_kaggle.drop_next(1, methods="CreateDataset", after_commit=True)
    folder = stage("one", {"a.ckpt": b"1" * 100})
    published = _retry(lambda: store.publish(folder, "one"))
    assert published.number == 1 and len(fake_kaggle.versions(REF)) == 1


def test_hung_create_is_killed_and_retry_makes_one_version(kaggle_env, stage, fake_kaggle):
    store = KaggleDatasetStore(REF, call_timeout=2.0)
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.hang_next(1, methods="CreateDatasetVersion", after_commit=True)
    folder = stage("two", {"b.ckpt": b"2"})
    with pytest.raises(TransientError, match="timed out after"):
        store.publish(folder, "two")
    assert fake_kaggle.faults.holding() == 1, "the call gave up only when the server let the request go"
    fake_kaggle.release()
    assert store.publish(folder, "two").number == 2 and len(fake_kaggle.versions(REF)) == 2


def test_hang_times_out_within_the_bound(kaggle_env, fake_kaggle):
    store = KaggleDatasetStore(REF, call_timeout=1.5)
    fake_kaggle.hang_next(1, methods="ListDatasetFiles")
    with pytest.raises(TransientError, match=r"timed out after 1\.5 s"):
        store.list_files()
    assert fake_kaggle.faults.holding() == 1, "the call gave up only when the server let the request go"


@pytest.mark.parametrize(("status", "method"), [(500, "StartBlobUpload"), (429, "CreateDatasetVersion")])
def test_http_errors_are_transient_and_retry_succeeds(store, stage, fake_kaggle, status, method):
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.fail_next(1, status=status, methods=method)
    with pytest.raises(TransientError, match=f"HTTP {status}"):
        store.publish(stage("two", {"b.ckpt": b"2"}), "two")
    fake_kaggle.fail_next(1, status=status, methods=method)
    retries = []
    published = retry_call(
        lambda: store.publish(stage(f"three-{len(retries)}", {"c.ckpt": b"3"}), "three"),
        base_delay=0.01,
        on_retry=lambda n, delay, error: retries.append(error),
        rng=random.Random(1),
    )
    assert published.number == 2 and len(retries) == 1
    assert [sorted(v.files) for v in fake_kaggle.versions(REF)] == [["a.ckpt"], ["c.ckpt"]]


def test_failed_blob_upload_is_transient(store, stage, fake_kaggle):
    fake_kaggle.fail_next(1, status=500, methods="PUT")
    # kaggle 2.x raises; 1.8.x drops the file and creates the version anyway, which the file check catches.
    with pytest.raises(TransientError, match="Upload unsuccessful|incomplete: missing"):
        store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    assert all(not v.files for v in fake_kaggle.versions(REF)) if fake_kaggle.datasets else True


def test_dropped_connection_is_transient(store, stage, fake_kaggle):
    fake_kaggle.drop_next(1, methods="GetDatasetStatus")
    with pytest.raises(TransientError, match="ConnectionError"):
        store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    assert not fake_kaggle.datasets


def test_silently_dropped_file_fails_verification(store, stage, fake_kaggle):
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.lose_next_upload("b.ckpt")  # what kaggle 1.6 does with a failed upload
    with pytest.raises(TransientError, match=r"missing \['b.ckpt'\]"):
        store.publish(stage("two", {"b.ckpt": b"2", "manifest.json": b"{}"}), "two")


def test_publish_waits_for_the_previous_version(store, stage, fake_kaggle):
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.processing_delay(3)
    store.publish(stage("two", {"b.ckpt": b"2"}), "two")
    fake_kaggle.processing_delay(0)
    assert store.publish(stage("three", {"c.ckpt": b"3"}), "three").number == 3
    assert all(r.status != 403 for r in fake_kaggle.calls("CreateDatasetVersion"))
    statuses = fake_kaggle.calls("GetDatasetStatus")
    assert len(statuses) >= 5  # it polled through the pending answers


def test_ready_timeout(kaggle_env, stage, fake_kaggle):
    store = KaggleDatasetStore(REF, ready_timeout=0.3)
    store.poll_interval = 0.1
    fake_kaggle.processing_delay(100)
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    with pytest.raises(TransientError, match="still processing"):
        store.publish(stage("two", {"b.ckpt": b"2"}), "two")
    assert len(fake_kaggle.versions(REF)) == 1


def test_refused_or_missing_credentials_are_auth_errors(store, stage, fake_kaggle, monkeypatch):
    fake_kaggle.refuse_credentials()
    with pytest.raises(AuthError):
        store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.refuse_credentials(False)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(AuthError, match="no Kaggle credentials"):
        store.list_files()


def test_the_key_never_leaks(store, stage, fake_kaggle):
    key = fake_kaggle.key
    store.publish(stage("one", {"a.ckpt": b"1" * 64, "manifest.json": b"{}"}), "one")
    fake_kaggle.fail_next(1, status=500, methods="GetDatasetStatus", message=f"rejected key {key}")
    with pytest.raises(TransientError) as caught:
        store.publish(stage("two", {"b.ckpt": b"2"}), "two")
    assert key not in str(caught.value) and "***" in str(caught.value)
    assert all(key.encode() not in r.body for r in fake_kaggle.requests)
    assert all(key.encode() not in data for v in fake_kaggle.versions(REF) for data in v.files.values())
    assert key not in repr(store) + store.description + repr(find_credentials()) + str(find_credentials())


def test_refuses_what_it_cannot_publish(store, stage):
    with pytest.raises(StoreError, match="never uploads"):
        store.publish(stage("meta", {"datapackage.json": b"{}"}), "x")
    with pytest.raises(StoreError, match="nothing to publish"):
        store.publish(stage("empty", {}), "x")


@pytest.mark.parametrize(
    ("dataset", "title"),
    [("no-slash-here", None), ("me/short", None), ("me/has space x", None), ("me/fine-slug", "ab")],
)
def test_constructor_validates(dataset, title):
    with pytest.raises(ConfigError):
        KaggleDatasetStore(dataset, title=title)


@pytest.fixture
def token_env(kaggle_env, fake_kaggle, monkeypatch):
    """Log in with an access token (``KAGGLE_API_TOKEN``): the client calls IntrospectToken at login."""
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.token)


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_login_failures_are_transient_and_retried(token_env, store, stage, fake_kaggle, fault):
    if fault == "503":
        fake_kaggle.fail_next(2, status=503, methods="IntrospectToken")
    else:
        fake_kaggle.drop_next(2, methods="IntrospectToken")
    errors = []
    published = retry_call(
        lambda: store.publish(stage(f"one-{len(errors)}", {"a.ckpt": b"1"}), "one"),
        base_delay=0.01,
        on_retry=lambda n, delay, error: errors.append(error),
        rng=random.Random(0),
    )
    assert published.number == 1 and len(fake_kaggle.versions(REF)) == 1
    assert fake_kaggle.faults.pending() == 0 and errors
    assert all("login failed" in str(e) for e in errors)


def test_refused_token_is_an_auth_error_naming_its_source(token_env, store, stage, fake_kaggle):
    fake_kaggle.refuse_credentials()
    with pytest.raises(AuthError, match="refused the credentials from access token from KAGGLE_API_TOKEN") as caught:
        store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    assert fake_kaggle.token not in str(caught.value)


def test_refused_key_names_its_source(store, stage, fake_kaggle):
    fake_kaggle.refuse_credentials()
    with pytest.raises(AuthError, match="refused the credentials from KAGGLE_USERNAME/KAGGLE_KEY"):
        store.publish(stage("one", {"a.ckpt": b"1"}), "one")


@pytest.mark.parametrize("conflict", ["title", "deleted_slug"])
def test_name_in_use_is_refused_for_good(store, stage, fake_kaggle, conflict):
    if conflict == "title":
        fake_kaggle.add_dataset("fake-user/other-dataset", title=store.title)
        text = f'The requested title "{store.title}" is already in use by a dataset. Please choose another title.'
    else:
        fake_kaggle.add_dataset(REF, title="Old checkpoints")
        fake_kaggle.delete_dataset(REF)
        text = 'The requested slug "lm-checkpoints" is already in use'
    with pytest.raises(RefusedError) as caught:
        _retry(lambda: store.publish(stage("one", {"a.ckpt": b"1"}), "one"))
    message = str(caught.value)
    assert f"Kaggle will not create {REF}: {text}" in message
    assert "--sync.dataset" in message and "--sync.title" in message and "\n" not in message
    assert len(fake_kaggle.calls("CreateDataset")) == 1  # not retried
    assert REF not in fake_kaggle.datasets


def test_slug_in_use_by_our_own_dataset_adds_a_version(store, stage, fake_kaggle):
    fake_kaggle.add_dataset(REF, title=store.title)
    fake_kaggle.fail_next(1, status=404, methods="GetDatasetStatus")  # e.g. not visible yet when first asked
    published = store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    assert published.number == 2 and fake_kaggle.versions(REF)[-1].files == {"a.ckpt": b"1"}


def test_default_title_is_the_slug(kaggle_env):
    assert KaggleDatasetStore(REF).title == "lm-checkpoints"


def test_permission_403_is_refused_not_retried(store, stage, fake_kaggle):
    fake_kaggle.add_dataset(REF, title=store.title)  # made elsewhere: a 403 is no first-version window
    fake_kaggle.fail_next(5, status=403, methods="CreateDatasetVersion", message="Permission denied")
    with pytest.raises(RefusedError, match=r"HTTP 403: Permission denied; .*--sync.dataset"):
        _retry(lambda: store.publish(stage("two", {"b.ckpt": b"2"}), "two"))
    assert len(fake_kaggle.calls("CreateDatasetVersion")) == 1


def test_429_waits_the_retry_after_it_was_given(store, stage, fake_kaggle):
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    fake_kaggle.fail_next(1, status=429, methods="CreateDatasetVersion", retry_after=0.25)
    delays = []
    published = retry_call(
        lambda: store.publish(stage(f"two-{len(delays)}", {"b.ckpt": b"2"}), "two"),
        base_delay=0.001,
        on_retry=lambda n, delay, error: delays.append((delay, error.retry_after)),
        rng=random.Random(0),
    )
    assert published.number == 2 and delays == [(0.25, 0.25)]
    assert [r.status for r in fake_kaggle.calls("CreateDatasetVersion")] == [429, 200]
