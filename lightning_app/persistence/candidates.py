"""Checkpoint candidates: what ``--resume`` can see in a folder or a tree, newest first, verified on demand."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_app.persistence.manifest import (
    CHECKPOINT_GLOB,
    MANIFEST_NAME,
    CheckpointEntry,
    Manifest,
    parse_checkpoint_name,
    sha256_of,
)

log = logging.getLogger("lightning_app.restore")

#: Where a checkpoint file keeps ``KaggleModelCheckpoint``'s state (its ``state_key``), ``run_id`` included.
CALLBACK_STATE_KEY = "KaggleModelCheckpoint"


@dataclass
class Candidate:
    """One checkpoint file somewhere: the local folder, an attached input, or a downloaded version."""

    source: str  # "local" | "input" | "remote"
    path: Path
    entry: CheckpointEntry
    in_manifest: bool  # False: found by scanning; the step came from loading the file
    verified: bool | None = None  # None: not checked yet
    origin: str = ""  # where it came from, for the log, when its path does not say (a download)

    @property
    def order_key(self) -> tuple[str, int, str]:
        return self.entry.order_key

    def describe(self) -> str:
        return f"{self.path.name} (epoch {self.entry.epoch}, step {self.entry.global_step})"


def entry_from_file(path: Path) -> CheckpointEntry | None:
    """Build an entry for a checkpoint with no manifest by loading it (memory-mapped: only what is read)."""
    parsed = parse_checkpoint_name(path.name)
    if parsed is None:
        return None
    epoch, timestamp = parsed
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = int(ckpt.get("global_step", -1))
        settings = _settings_from_hparams(ckpt.get("hyper_parameters", {}))
        run_id = str(ckpt.get("callbacks", {}).get(CALLBACK_STATE_KEY, {}).get("run_id", ""))
    except Exception as error:  # noqa: BLE001 - an unreadable file is not a candidate
        log.warning(f"Skipping {path}: it does not load ({type(error).__name__}: {error})")
        return None
    return CheckpointEntry(path.name, epoch, step, timestamp, path.stat().st_size, run_id=run_id, settings=settings)


def _settings_from_hparams(hparams: dict) -> dict[str, object]:
    keys = ("pe_type", "model_size", "vocab_size")
    return {k: hparams[k] for k in keys if k in hparams}


def scan_folder(folder: Path, source: str) -> list[Candidate]:
    """Candidates directly in ``folder``: manifest entries whose file exists, then files the manifest lacks."""
    manifest = Manifest.load(folder) or Manifest()
    found: list[Candidate] = []
    for entry in manifest.entries.values():
        path = folder / entry.file
        if path.is_file():
            found.append(Candidate(source, path, entry, in_manifest=True))
    for path in sorted(folder.glob(CHECKPOINT_GLOB)):
        if path.name not in manifest.entries and path.is_file():
            entry = entry_from_file(path)
            if entry is not None:
                found.append(Candidate(source, path, entry, in_manifest=False, verified=True))
    return found


def scan_tree(root: Path, source: str) -> list[Candidate]:
    """Candidates anywhere under ``root`` (``/kaggle/input/<slug>/``, ``/kaggle/input/datasets/<o>/<s>/``...)."""
    if not root.is_dir():
        return []
    found: list[Candidate] = []
    for folder, _dirs, files in os.walk(root, followlinks=True):
        if MANIFEST_NAME in files or any(parse_checkpoint_name(f) for f in files):
            found.extend(scan_folder(Path(folder), source))
    return found


def verify(candidate: Candidate) -> str | None:
    """None when the file is what its manifest says (size and sha256); else what is wrong."""
    if not candidate.in_manifest:
        return None  # it loaded when it was scanned
    entry = candidate.entry
    try:
        size = candidate.path.stat().st_size
        if entry.size and size != entry.size:
            return f"size {size} bytes, the manifest says {entry.size}"
        if entry.sha256 and sha256_of(candidate.path) != entry.sha256:
            return "sha256 differs from the manifest"
    except OSError as error:
        return f"unreadable ({error})"
    return None


def newest_first(candidates: list[Candidate]) -> list[Candidate]:
    """Most recently written first (see `CheckpointEntry.order_key`); a local copy wins a tie with the same file
    elsewhere."""
    preference = {"local": 2, "input": 1, "remote": 0}
    return sorted(candidates, key=lambda c: (c.order_key, preference.get(c.source, 0)), reverse=True)


def first_verified(candidates: list[Candidate]) -> Candidate | None:
    """The newest candidate that verifies; each one that fails is reported and the next newest tried."""
    for candidate in newest_first(candidates):
        problem = verify(candidate)
        candidate.verified = problem is None
        if problem is None:
            return candidate
        log.warning(f"Skipping {candidate.path}: {problem}; trying the next newest checkpoint")
    return None


def runs_newest_first(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by run, the run checkpointed most recently first; each run's own newest first."""
    runs: dict[str, list[Candidate]] = {}
    for candidate in newest_first(candidates):
        runs.setdefault(candidate.entry.run_id, []).append(candidate)
    return list(runs.values())  # dicts keep insertion order: each run's newest decides its place


def run_label(run_id: str) -> str:
    return f"run {run_id}" if run_id else "a run from before run ids"
