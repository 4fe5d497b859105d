"""`--checkpoint.monitor`: the best checkpoint survives retention, is marked in the manifest, and is `best`."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from callbacks.checkpoint import SavedCheckpoint
from callbacks.kaggle_sync import KaggleDatasetSync
from lightning_app.persistence.directory_store import DirectoryStore
from lightning_app.persistence.folder import CheckpointFolder, read_manifest, write_manifest
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.publisher import BackgroundPublisher
from tests.cli_helpers import cli_env, fit_args, run

pytestmark = pytest.mark.slow


def test_the_best_checkpoint_is_kept_marked_and_is_what_ckpt_path_best_loads(tmp_path):
    env = cli_env(tmp_path / "home")
    # mode max: the *highest* val_loss is "best", i.e. the first epoch's, which keep_last 1 alone would delete.
    flags = ("--checkpoint.monitor", "val_loss", "--checkpoint.mode", "max", "--checkpoint.keep_last", "1")
    trained = run(fit_args(*flags), tmp_path, env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    entries = read_manifest(tmp_path / "checkpoints").newest_first()
    assert len(entries) == 2, [e.file for e in entries]
    newest, best = entries
    assert best.best and not newest.best
    assert best.metrics["val_loss"] > newest.metrics["val_loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("kaggle_epoch_*.ckpt")) == sorted(
        [best.file, newest.file]
    )

    validated = run([*fit_args()[:3], "validate", "--config", fit_args()[5], "--ckpt_path", "best"], tmp_path, env)
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert best.file in validated.stdout + validated.stderr


def test_ckpt_path_best_without_a_best_checkpoint_is_one_line(tmp_path):
    env = cli_env(tmp_path / "home")
    result = run([*fit_args()[:3], "validate", "--config", fit_args()[5], "--ckpt_path", "best"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --ckpt_path: got 'best'; expected a checkpoint")


class GatedStore(DirectoryStore):
    """A folder store whose first publish waits for ``release``: checkpoints saved meanwhile queue up."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started, self.release = threading.Event(), threading.Event()

    def publish(self, folder: Path, notes: str):
        self.started.set()
        assert self.release.wait(30), "the test never released the gate"
        return super().publish(folder, notes)


def _saved(folder: Path, manifest: Manifest, epoch: int, best: bool) -> SavedCheckpoint:
    name = f"kaggle_epoch_{epoch}_20261203-1000{epoch:02d}.ckpt"
    (folder / name).write_bytes(bytes([epoch]) * 64)
    entry = CheckpointEntry(name, epoch, 10 * (epoch + 1), name[-20:-5], end_of_epoch=True, run_id="run", best=best)
    for other in manifest.newest_first():  # one best per run, as KaggleModelCheckpoint keeps it
        if best and other.best:
            manifest.add(replace(other, best=False))
    manifest.add(entry)
    write_manifest(folder, manifest)
    return SavedCheckpoint(folder / name, entry, CheckpointFolder(folder), tuple(manifest.newest_first("run")))


def test_upload_best_adds_the_best_to_the_first_version_after_it_changed_and_never_again(tmp_path):
    folder, store = tmp_path / "checkpoints", GatedStore(tmp_path / "versions")
    folder.mkdir()
    sync = KaggleDatasetSync(upload_best=True)
    sync.publisher = BackgroundPublisher(store, on_published=sync._note_published)
    manifest = Manifest()
    try:
        sync._on_checkpoint_saved(_saved(folder, manifest, 0, best=True))
        assert store.started.wait(30)
        sync._on_checkpoint_saved(_saved(folder, manifest, 1, best=True))  # queued behind epoch 0's upload...
        sync._on_checkpoint_saved(_saved(folder, manifest, 2, best=False))  # ...and replaced: latest wins
        store.release.set()
        assert sync.publisher.flush(30)
        sync._on_checkpoint_saved(_saved(folder, manifest, 3, best=False))
        assert sync.publisher.flush(30)
    finally:
        sync.publisher.close()
    held = [sorted(f.name for f in store.list_files(v) if f.name.endswith(".ckpt")) for v in store.versions()]
    names = [f"kaggle_epoch_{e}_20261203-1000{e:02d}.ckpt" for e in range(4)]
    # Epoch 1's own version never happened, so the best rides along with epoch 2's; after that, never again.
    assert held == [[names[0]], sorted([names[2], names[1]]), [names[3]]]


def test_without_upload_best_a_version_holds_only_the_newest(tmp_path):
    folder, store = tmp_path / "checkpoints", DirectoryStore(tmp_path / "versions")
    folder.mkdir()
    sync = KaggleDatasetSync()
    sync.publisher = BackgroundPublisher(store, on_published=sync._note_published)
    manifest = Manifest()
    try:
        sync._on_checkpoint_saved(_saved(folder, manifest, 0, best=True))
        sync._on_checkpoint_saved(_saved(folder, manifest, 1, best=False))
        assert sync.publisher.flush(30)
    finally:
        sync.publisher.close()
    newest = store.list_files(store.versions()[-1])
    assert sorted(f.name for f in newest) == sorted(["manifest.json", "kaggle_epoch_1_20261203-100001.ckpt"])


def test_upload_best_through_the_real_client_never_uploads_an_unchanged_best_twice(tmp_path, fake_kaggle):
    env = cli_env(tmp_path / "home", fake_kaggle.env(tmp_path))
    # mode max: epoch 0 stays the best all along; each later version holds only its newest checkpoint.
    flags = ("--checkpoint.monitor", "val_loss", "--checkpoint.mode", "max", "--checkpoint.keep_last", "1")
    result = run(fit_args(*flags, "--sync.upload_best", "true", "--sync.retry_delay", "0.1"), tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    (ref,) = fake_kaggle.datasets
    held = [sorted(n for n in v.files if n.endswith(".ckpt")) for v in fake_kaggle.versions(ref)]
    best = read_manifest(tmp_path / "checkpoints").best()
    assert best is not None and best.epoch == 0
    assert [len(files) for files in held] == [1, 1, 1]
    assert held[0] == [best.file] and all(best.file not in files for files in held[1:])
