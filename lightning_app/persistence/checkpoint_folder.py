"""The checkpoint folder's one owner: names, the manifest, run ids, retention, and a killed run's leftovers.

Used by `KaggleModelCheckpoint` (which decides *when* to save and hands each finished file over), by restore and
by the ``checkpoints`` command. Only global rank 0 makes one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from lightning_app.persistence.leftovers import Cleanup, clean_folder
from lightning_app.persistence.manifest import CheckpointEntry, Manifest, parse_checkpoint_name

FILE_PREFIX = "kaggle_epoch_"


class CheckpointFolder:
    """One folder of ``kaggle_epoch_<epoch>_<UTC YYYYmmdd-HHMMSS>[-NN].ckpt`` files and its ``manifest.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = Manifest.load(self.path) or Manifest()

    def clean(self) -> Cleanup:
        """Remove what a killed run left and adopt its orphaned complete checkpoints (see `leftovers`)."""
        return clean_folder(self.path, self.manifest)

    def next_name(self, epoch: int, also_taken: Iterable[str] = ()) -> str:
        """A name never held by this folder's manifest nor on disk: ``-01``, ``-02``... within one second."""
        base = f"{FILE_PREFIX}{epoch}_{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        taken = set(also_taken)
        name, seq = f"{base}.ckpt", 0
        while name in taken or self.manifest.ever_held(name) or (self.path / name).exists():
            seq += 1
            name = f"{base}-{seq:02d}.ckpt"
        return name

    @staticmethod
    def timestamp_of(name: str) -> str:
        parsed = parse_checkpoint_name(name)
        if parsed is None:
            raise ValueError(f"not a checkpoint name: {name!r}")
        return parsed[1]

    def record(self, entry: CheckpointEntry, keep_last: int | None) -> list[str]:
        """Add a finished checkpoint's entry, delete its run's checkpoints beyond the newest ``keep_last`` (the
        run's best is kept besides them; other runs' files are never touched), save the manifest. Returns the
        names deleted."""
        if entry.best:
            for other in self.manifest.newest_first(entry.run_id):
                other.best = False
        self.manifest.add(entry)
        deleted = []
        if keep_last is not None:
            for old in [e for e in self.manifest.newest_first(entry.run_id) if not e.best][keep_last:]:
                (self.path / old.file).unlink(missing_ok=True)
                self.manifest.discard(old.file)
                deleted.append(old.file)
        self.manifest.save(self.path)
        return deleted
