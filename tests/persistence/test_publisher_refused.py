"""A dataset name Kaggle refuses for good stops publishing at once: one warning, no retry loop, a prompt flush."""

from __future__ import annotations

import logging

import pytest

from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import BackgroundPublisher, PublishJob

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
