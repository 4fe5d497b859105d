"""A dataset name Kaggle refuses for good stops publishing at once: one warning, no retry loop, a prompt flush."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import BackgroundPublisher, PublishJob
from lightning_app.persistence.store import AuthError, CheckpointStore, PublishedVersion
from tests.support.waiting import wait_for

REF = "fake-user/lm-checkpoints"


@pytest.mark.parametrize("conflict", ["title", "deleted_slug"])
def test_name_in_use_stops_sync_with_one_warning(kaggle_env, fake_kaggle, tmp_path, caplog, conflict):
    store = KaggleDatasetStore(REF, call_timeout=30.0)
    if conflict == "title":
        fake_kaggle.add_dataset("fake-user/older-run", title=store.title)
    else:
        fake_kaggle.add_dataset(REF, title="Old checkpoints")
        fake_kaggle.delete_dataset(REF)
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "a.ckpt").write_bytes(b"1")
    entry = CheckpointEntry("a.ckpt", 0, 10, "20261202-000000")
    publisher = BackgroundPublisher(store, attempts=6, base_delay=60.0, max_delay=600.0)
    try:
        with caplog.at_level(logging.WARNING, logger="lightning_app.sync"):
            publisher.submit(PublishJob(folder, "one", entry))
            # With a 60 s backoff, a retried failure would hold this flush for its whole timeout; the refusal
            # ends it as soon as the one CreateDataset answer is in.
            assert publisher.flush(timeout=120.0) is False
    finally:
        publisher.close()
    assert publisher.disabled and "--sync.dataset" in publisher.disabled and "--sync.title" in publisher.disabled
    assert len(fake_kaggle.calls("CreateDataset")) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"Checkpoint sync stopped: {store.description}: publish: Kaggle will not create {REF}"
    )
    assert "is already in use" in warnings[0]


class RefusingStore(CheckpointStore):
    """Refuses the credentials, but only once a second job has been queued behind the first publish."""

    description = "test:refusing"

    def __init__(self) -> None:
        self.publish_started, self.second_queued = threading.Event(), threading.Event()
        self.published: list[str] = []

    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        self.published.append(notes)
        self.publish_started.set()
        assert self.second_queued.wait(30), "the test never queued its second job"
        raise AuthError("401 Unauthorized")

    def read_version(self, version=None, texts=()):
        raise NotImplementedError

    def fetch_file(self, name, dest, version, size=None):
        raise NotImplementedError


def test_a_refusal_drops_the_job_queued_behind_it_with_one_warning(tmp_path, caplog):
    store = RefusingStore()
    publisher = BackgroundPublisher(store, attempts=6, base_delay=60.0, max_delay=600.0)
    jobs = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{name}.ckpt").write_bytes(b"1")
        jobs.append(PublishJob(folder, name, CheckpointEntry(f"{name}.ckpt", 0, 10, "20261202-000000")))
    try:
        with caplog.at_level(logging.WARNING, logger="lightning_app.sync"):
            publisher.submit(jobs[0])
            assert store.publish_started.wait(30)
            publisher.submit(jobs[1])  # queued while the first publish is in flight
            store.second_queued.set()
            assert publisher.flush(timeout=30.0) is False
            # Before closing: until nothing is queued or in flight, the worker could still take the second job.
            wait_for(lambda: publisher.unpublished() == (set(), set()), what="the publisher to settle")
    finally:
        publisher.close()
    assert store.published == ["first"], "the queued job was published into the same refusal"
    assert not jobs[1].folder.exists(), "the dropped job's staged folder was left behind"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Checkpoint sync stopped: credentials refused (401 Unauthorized). Checkpoints stay local only."]
