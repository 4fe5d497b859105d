"""A new version's life after an ok create, through the real ``kaggle`` client against the fake server: it lags
(404, not processed yet), its processing fails, or a new dataset's first version still blocks new versions."""

from __future__ import annotations

import json
import logging

import pytest

from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import BackgroundPublisher, PublishJob
from lightning_app.persistence.store import ProcessingFailedError, RefusedError

REF = "fake-user/lm-checkpoints"


@pytest.fixture
def store(kaggle_env) -> KaggleDatasetStore:
    store = KaggleDatasetStore(REF, call_timeout=30.0)
    store.poll_interval = store.settle_pause = 0.01
    return store


def _job(stage, step: int, size: int = 1000) -> PublishJob:
    name = f"kaggle_epoch_{step}.ckpt"
    entry = CheckpointEntry(name, step, step, f"20261203-0000{step:02d}")
    return PublishJob(stage(f"s{step}", {name: bytes([step]) * size, "manifest.json": b"{}"}), f"step {step}", entry)


def _publisher(store: KaggleDatasetStore) -> BackgroundPublisher:
    return BackgroundPublisher(store, attempts=3, base_delay=0.01, max_delay=0.05, confirm_interval=0.01)


def _creates(fake) -> list[int | None]:
    return [r.status for r in fake.calls("CreateDataset") + fake.calls("CreateDatasetVersion")]


def _confirm(store: KaggleDatasetStore, tries: int = 20):
    for _ in range(tries):
        if (version := store.confirm()) is not None:
            return version
    raise AssertionError(f"not confirmed after {tries} asks")


@pytest.mark.parametrize("lag", ["not_visible", "processing"])
def test_a_lagging_version_is_pending_then_confirmed_without_a_second_upload(store, stage, fake_kaggle, lag):
    if lag == "not_visible":
        fake_kaggle.lag_new_versions(store.settle_polls + 3)  # 404 for owner/slug/N beyond the polls after create
    else:
        fake_kaggle.processing_delay(store.settle_polls + 3)  # "pending"; current_version_number stays empty
    published = store.publish(stage("one", {"a.ckpt": b"1" * 100}), "one")
    assert published.processing and published.number is None and published.bytes_sent == 100
    if lag == "processing":  # the newest *processed* version: none yet, so the field is left out
        query = {"ownerSlug": "fake-user", "datasetSlug": "lm-checkpoints"}
        assert "currentVersionNumber" not in fake_kaggle.state.rpc("GetDataset", "fake-user", query).body
    assert store.confirm() is None  # still lagging: asked once, not yet
    confirmed = _confirm(store)
    assert confirmed.number == 1 and not confirmed.processing and confirmed.bytes_sent == 0
    assert [f.name for f in confirmed.files] == ["a.ckpt"]
    assert _creates(fake_kaggle) == [200] and len(fake_kaggle.calls("PUT")) == 1
    assert store.confirm() is None  # nothing pending any more


def test_lagging_versions_are_uploaded_once_each_and_end_confirmed(store, stage, fake_kaggle):
    fake_kaggle.lag_new_versions(store.settle_polls + 2)
    publisher = _publisher(store)
    try:
        for step in (1, 2):
            publisher.submit(_job(stage, step))
            assert publisher.flush(timeout=120.0), publisher.last_error
            assert publisher.last_published.entry.global_step == step
            assert publisher.last_published.version.number == step and publisher.processing is None
    finally:
        publisher.close()
    assert _creates(fake_kaggle) == [200, 200]  # exactly one create per checkpoint, no duplicate upload
    assert len(fake_kaggle.calls("PUT")) == 4  # two files per checkpoint, each sent once
    assert publisher.last_error is None


def test_processing_that_fails_after_an_ok_create_warns_once_and_the_next_checkpoint_lands(
    store, stage, fake_kaggle, caplog
):
    publisher = _publisher(store)
    try:
        publisher.submit(_job(stage, 1, size=300_000))
        assert publisher.flush(timeout=120.0)
        fake_kaggle.fail_processing(1)  # e.g. over the private storage quota: the create still answers ok
        with caplog.at_level(logging.WARNING, logger="lightning_app.sync"):
            publisher.submit(_job(stage, 2, size=200_000))
            assert publisher.flush(timeout=120.0) is False
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "processing failed" in warnings[0] and "private storage quota" in warnings[0]
        assert "holds about 0.3 MB in 1 versions before this one, which adds 0.2 MB" in warnings[0]
        assert publisher.failed[0].global_step == 2
        assert _creates(fake_kaggle) == [200, 200]  # the failed checkpoint was not uploaded again
        publisher.submit(_job(stage, 3))
        assert publisher.flush(timeout=120.0)
        assert publisher.last_published.entry.global_step == 3 and publisher.last_published.version.number == 3
    finally:
        publisher.close()
    assert _creates(fake_kaggle) == [200, 200, 200]


def test_a_pending_version_whose_processing_fails_is_reported_by_confirm(store, stage, fake_kaggle):
    fake_kaggle.processing_delay(store.settle_polls + 1)
    fake_kaggle.fail_processing(1)
    assert store.publish(stage("one", {"a.ckpt": b"1"}), "one").processing
    with pytest.raises(ProcessingFailedError, match="storage quota"):
        _confirm(store)


def test_403_of_a_new_datasets_first_version_is_retried_within_a_bound(store, stage, fake_kaggle):
    fake_kaggle.refuse_versions_of_new_dataset(2)
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    assert store.publish(stage("two", {"b.ckpt": b"2"}), "two").number == 2
    assert _creates(fake_kaggle) == [200, 403, 403, 200]


def test_403_that_goes_on_is_a_refusal_after_the_bound(store, stage, fake_kaggle):
    fake_kaggle.refuse_versions_of_new_dataset(100)
    store.publish(stage("one", {"a.ckpt": b"1"}), "one")
    with pytest.raises(RefusedError, match="HTTP 403"):
        store.publish(stage("two", {"b.ckpt": b"2"}), "two")
    assert _creates(fake_kaggle) == [200] + [403] * (store.first_version_403_tries + 1)


@pytest.mark.parametrize("delete_old", [False, True])
def test_stored_size_is_logged_and_delete_old_versions_keeps_one(kaggle_env, stage, fake_kaggle, caplog, delete_old):
    store = KaggleDatasetStore(REF, call_timeout=30.0, delete_old_versions=delete_old)
    store.poll_interval = store.settle_pause = 0.01
    publisher = _publisher(store)
    try:
        with caplog.at_level(logging.INFO, logger="lightning_app.sync"):
            for step in (1, 2, 3):
                publisher.submit(_job(stage, step, size=400_000))
                assert publisher.flush(timeout=120.0), publisher.last_error
    finally:
        publisher.close()
    numbers = [v.number for v in fake_kaggle.versions(REF)]
    sent = [
        json.loads(r.body)["body"].get("deleteOldVersions", False) for r in fake_kaggle.calls("CreateDatasetVersion")
    ]
    assert sent == [delete_old, delete_old]  # the first version comes with CreateDataset
    published = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Published ")]
    assert len(published) == 3
    if delete_old:
        assert numbers == [3] and store.stored_bytes == 400_002
        assert all(line.endswith("; the dataset holds 0.4 MB)") for line in published), published
    else:
        assert numbers == [1, 2, 3] and store.stored_bytes == 3 * 400_002
        holds = [line.rsplit("holds ", 1)[1] for line in published]
        assert holds == ["0.4 MB)", "0.8 MB)", "1.2 MB)"]
