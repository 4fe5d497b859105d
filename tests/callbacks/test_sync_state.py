"""Never silently unsafe: the sync's state (NOT SAFE, the final line) and ``--sync.required``'s cheap check, through
the real ``kaggle`` client against the fake server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from callbacks.checkpoint import SavedCheckpoint
from callbacks.kaggle_sync import KaggleDatasetSync
from lightning_app.persistence.folder import CheckpointFolder, DiskFull, read_manifest, write_manifest
from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.publisher import BackgroundPublisher, Published
from lightning_app.persistence.store import AuthError, PublishedVersion, RefusedError
from lightning_app.persistence.sync_state import SyncState
from tests.support.waiting import wait_for

REF = "fake-user/lm-checkpoints"


def _entry(step: int) -> CheckpointEntry:
    return CheckpointEntry(f"kaggle_epoch_{step}_20261203-0000{step:02d}.ckpt", step, step, f"20261203-0000{step:02d}")


def _save(folder: Path, step: int) -> SavedCheckpoint:
    """A checkpoint file and its manifest entry, as `KaggleModelCheckpoint` leaves them."""
    entry = _entry(step)
    folder.mkdir(exist_ok=True)
    (folder / entry.file).write_bytes(bytes([step]) * 500)
    manifest = read_manifest(folder) or Manifest()
    manifest.add(entry)
    write_manifest(folder, manifest)
    run_entries = tuple(manifest.newest_first(entry.run_id))
    return SavedCheckpoint(folder / entry.file, entry, CheckpointFolder(folder), run_entries)


def test_a_stalled_upload_makes_the_run_not_safe_with_one_warning_per_checkpoint(
    kaggle_env, fake_kaggle, tmp_path, caplog
):
    store = KaggleDatasetStore(REF, call_timeout=30.0)
    store.poll_interval = store.settle_pause = 0.01
    sync = KaggleDatasetSync(dataset=REF)
    sync.publisher = BackgroundPublisher(store, attempts=3, base_delay=0.01, max_delay=0.05)
    fake_kaggle.hang_next(1, methods="GetDatasetStatus")  # the first publish stalls until released
    folder = tmp_path / "checkpoints"
    try:
        with caplog.at_level(logging.WARNING, logger="lightning_app.sync"):
            for step in (1, 2, 3):
                sync._on_checkpoint_saved(_save(folder, step))
                assert (sync.state.unsafe is None) == (step <= 2), sync.state
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [
            f"Checkpoints are NOT SAFE (3 checkpoints unpublished): {_entry(3).file} is only in {folder}"
        ]
        assert sync.state.bar_text == "NOT SAFE (3 checkpoints unpublished)"
        wait_for(lambda: fake_kaggle.faults.holding(), what="the first publish to reach the server and stall")
        fake_kaggle.release()
        assert sync.publisher.flush(timeout=120.0)
        state = sync.state
        assert (
            state.unsafe is None and state.behind == 0 and sync.state.bar_text == "v2@3"
        )  # checkpoint 1 (retried), then 3
        assert state.final_line(folder) == f"Final checkpoint {_entry(3).file} published as version 2 of {REF}"
    finally:
        sync.publisher.close()


def _published(step: int, number: int | None = 4) -> Published:
    return Published(_entry(step), PublishedVersion(number, (), 0, 0.0))


@pytest.mark.parametrize(
    ("state", "bar", "final"),
    [
        (SyncState(None, newest=_entry(3)), "", "NOT published: syncing is off; it is only in ckpts"),
        (
            SyncState("kaggle:a/b", "a/b", _entry(3), stopped="credentials refused (kaggle:a/b: publish: 401)"),
            "NOT SAFE (credentials refused)",
            "NOT published: credentials refused (kaggle:a/b: publish: 401); it is only in ckpts",
        ),
        (
            SyncState("kaggle:a/b", "a/b", _entry(3), stopped="kaggle:a/b: Kaggle will not create a/b"),
            "NOT SAFE (publishing refused)",
            "NOT published: kaggle:a/b: Kaggle will not create a/b; it is only in ckpts",
        ),
        (
            SyncState("kaggle:a/b", "a/b", _entry(3), _published(2), processing=_published(3, None), behind=1),
            "v4@2 processing step 3",
            "NOT published: uploaded to a/b, but Kaggle had not finished processing it; it is only in ckpts",
        ),
        (SyncState("kaggle:a/b", "a/b", _entry(3), _published(3)), "v4@3", "published as version 4 of a/b"),
    ],
)
def test_bar_text_and_final_line(state, bar, final):
    assert state.bar_text == bar
    assert state.final_line("ckpts").startswith(f"Final checkpoint {_entry(3).file} ")
    assert state.final_line("ckpts").endswith(final)


@pytest.mark.parametrize("store", [None, "kaggle:a/b"])
def test_a_full_disk_is_not_safe_whether_syncing_is_on_or_off(store):
    full = DiskFull(Path("ckpts"), 2_000_000, 3_500_000, "kaggle_epoch_4_20261203-000004.ckpt", 4)
    state = SyncState(store, "a/b", _entry(3), _published(3), disk_full=full)
    assert state.unsafe == "disk full" and state.bar_text == "NOT SAFE (disk full)"
    assert state.final_line("ckpts") == (
        "Final training state (step 4) NOT saved: disk full in ckpts (2.0 MB free, a checkpoint needs 3.5 MB); "
        f"work since step 3 ({_entry(3).file}) would be lost"
    )


def test_check_access_is_cheap_and_names_what_failed(kaggle_env, fake_kaggle):
    assert "will be created" in KaggleDatasetStore(REF).check_access()
    fake_kaggle.add_dataset(REF, title="LM checkpoints")
    assert "exists (ready)" in KaggleDatasetStore(REF).check_access()
    with pytest.raises(RefusedError, match="belongs to someone-else, but the credentials are fake-user's"):
        KaggleDatasetStore("someone-else/lm-checkpoints").check_access()
    fake_kaggle.refuse_credentials()
    with pytest.raises(AuthError, match="refused the credentials from KAGGLE_USERNAME/KAGGLE_KEY"):
        KaggleDatasetStore(REF).check_access()
    assert not fake_kaggle.calls("PUT") and not fake_kaggle.calls("StartBlobUpload")
