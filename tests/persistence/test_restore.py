"""The restore hook's choices: newest across local / input / remote, verification, copies, refusals."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from lightning_app.errors import ConfigError
from lightning_app.persistence.directory_store import DirectoryStore
from lightning_app.persistence.folder import CheckpointFolder, read_manifest, sha256_of, write_manifest
from lightning_app.persistence.manifest import CheckpointEntry, Manifest
from lightning_app.persistence.restore import RestoreOptions, check_settings, collect, folder_lock

SETTINGS = {"pe_type": "rope", "model_size": "tiny", "vocab_size": 32}


def make_checkpoint(folder: Path, epoch: int, step: int, *, manifest: bool = True, stamp: str = "") -> Path:
    """A small loadable checkpoint with the fields restore reads, and its manifest entry."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = stamp or f"20261126-{step:06d}"
    path = folder / f"kaggle_epoch_{epoch}_{stamp}.ckpt"
    torch.save({"global_step": step, "epoch": epoch, "hyper_parameters": dict(SETTINGS)}, path)
    if manifest:
        found = read_manifest(folder) or Manifest()
        found.add(
            CheckpointEntry(path.name, epoch, step, stamp, path.stat().st_size, sha256_of(path), settings=SETTINGS)
        )
        write_manifest(folder, found)
    return path


def _remote(root: Path, epoch: int, step: int) -> DirectoryStore:
    store = DirectoryStore(root / "store")
    staged = root / "staged"
    make_checkpoint(staged, epoch, step)
    store.publish(staged, "test")
    return store


@pytest.mark.parametrize("order", list(itertools.permutations(["local", "input", "remote"])))
def test_the_newest_source_wins_whatever_the_order(tmp_path, order):
    steps = dict(zip(order, (10, 20, 30)))  # the last source in `order` holds the newest checkpoint
    local, inputs = tmp_path / "work" / "checkpoints", tmp_path / "input" / "datasets" / "me" / "run-checkpoints"
    make_checkpoint(local, 0, steps["local"])
    make_checkpoint(inputs, 0, steps["input"])
    store = _remote(tmp_path, 0, steps["remote"])
    inventory = collect(local, RestoreOptions(input_dir=str(tmp_path / "input")), store, tmp_path / "dl")
    assert inventory.chosen.source == order[-1]
    assert inventory.chosen.entry.global_step == 30
    assert {c.source for c in inventory.candidates} == {"local", "input", "remote"}


def test_the_most_recently_written_wins_then_the_higher_step(tmp_path):
    """A run resumed from an older checkpoint goes on from where it was resumed, not from its abandoned future."""
    folder = tmp_path / "ckpt"
    make_checkpoint(folder, 1, 50, stamp="20261126-010000")
    make_checkpoint(folder, 1, 60, stamp="20261126-020000")
    newer = make_checkpoint(folder, 0, 40, stamp="20261127-000000")
    assert collect(folder, RestoreOptions(input_dir=str(tmp_path / "none"))).chosen.path == newer


@pytest.mark.parametrize("damage", ["truncated", "wrong_sha256"])
def test_a_corrupt_newest_candidate_falls_back_with_a_warning(tmp_path, caplog, damage):
    folder = tmp_path / "ckpt"
    previous = make_checkpoint(folder, 0, 10)
    newest = make_checkpoint(folder, 1, 20)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="lightning_app.restore"):
        inventory = collect(folder, RestoreOptions(input_dir=str(tmp_path / "none")))
    assert inventory.chosen.path == previous
    assert f"Skipping {newest}" in caplog.text


def test_files_without_a_manifest_are_found_by_loading_them(tmp_path, caplog):
    folder = tmp_path / "input" / "old-slug"
    good = make_checkpoint(folder, 2, 64, manifest=False)
    broken = folder / "kaggle_epoch_3_20261126-999999.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="lightning_app.restore"):
        inventory = collect(tmp_path / "work", RestoreOptions(input_dir=str(tmp_path / "input")))
    assert inventory.chosen.path == good and inventory.chosen.entry.global_step == 64
    assert "does not load" in caplog.text


def test_make_local_copies_and_never_writes_the_input(tmp_path):
    inputs = tmp_path / "input" / "datasets" / "me" / "slug"
    source = make_checkpoint(inputs, 1, 20)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in inputs.iterdir()}
    inventory = collect(tmp_path / "work", RestoreOptions(input_dir=str(tmp_path / "input")))
    local = CheckpointFolder(tmp_path / "work").adopt(inventory.chosen)
    assert local == tmp_path / "work" / source.name and local.read_bytes() == source.read_bytes()
    assert source.name in read_manifest(tmp_path / "work").entries
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in inputs.iterdir()} == before


def test_a_checkpoint_for_another_model_is_refused_in_one_line(tmp_path):
    make_checkpoint(tmp_path, 0, 10)
    chosen = collect(tmp_path, RestoreOptions(input_dir=str(tmp_path / "none"))).chosen
    check_settings(chosen, dict(SETTINGS))
    with pytest.raises(ConfigError, match=r"pe_type: checkpoint has 'rope', this run asks for 'alibi'"):
        check_settings(chosen, {**SETTINGS, "pe_type": "alibi"})


def test_nothing_found(tmp_path):
    inventory = collect(tmp_path / "work", RestoreOptions(input_dir=str(tmp_path / "input")))
    assert inventory.chosen is None and not inventory.candidates


def test_a_dataset_that_does_not_exist_yet_is_nothing_found(tmp_path):
    """The first session of a run resumed with --resume: no dataset yet, nothing local or attached."""
    inventory = collect(
        tmp_path / "work", RestoreOptions(input_dir=str(tmp_path / "input")), DirectoryStore(tmp_path / "no-store")
    )
    assert inventory.chosen is None and not inventory.candidates and inventory.remote.missing


def test_the_dataset_attached_is_not_read_twice(tmp_path, caplog):
    """The newest version is attached (a launched chain attaches it): the same file, so no older version is read."""
    store = _remote(tmp_path, 0, 10)
    make_checkpoint(tmp_path / "staged-2", 1, 20)
    store.publish(tmp_path / "staged-2", "test")
    listing = store.read_version(texts=("manifest.json",))
    attached = tmp_path / "input" / "datasets" / "me" / "slug"
    store.fetch(attached, listing.number)
    with caplog.at_level(logging.INFO):
        inventory = collect(tmp_path / "work", RestoreOptions(input_dir=str(tmp_path / "input")), store)
    assert inventory.chosen.source == "input" and inventory.chosen.entry.global_step == 20
    assert inventory.remote.versions == [listing.number] and "holds no checkpoint" not in caplog.text


def test_processes_that_restore_together_download_once(tmp_path):
    """torchrun/SLURM start every rank at once: under the folder lock the first downloads, the rest reuse it."""
    import threading

    from lightning_app.persistence.restore import restore_newest

    store = _remote(tmp_path, 1, 40)
    fetches = []
    real_fetch = store.fetch_file
    store.fetch_file = lambda name, dest, *args: fetches.append(dest) or real_fetch(name, dest, *args)
    results = []
    options = RestoreOptions(input_dir=str(tmp_path / "none"))
    work = tmp_path / "work"
    threads = [
        threading.Thread(target=lambda: results.append(restore_newest(work, options, store, dict(SETTINGS))))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fetches) == 1
    assert {local for _chosen, local in results} == {work / next(work.glob("kaggle_epoch_*.ckpt")).name}
    assert not (work / ".remote").exists()


def test_a_restore_lock_held_too_long_is_one_line_naming_the_lock(tmp_path):
    held = FileLock(tmp_path / ".restore.lock")
    held.acquire()
    waited = r"another process has been restoring into .* delete .*\.restore\.lock"
    try:
        with pytest.raises(ConfigError, match=waited), folder_lock(tmp_path, timeout=0.05):
            pass
    finally:
        held.release()
    with folder_lock(tmp_path, timeout=0.05):  # free again: taken at once
        pass
