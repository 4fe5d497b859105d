"""What a killed run leaves in its checkpoint folder: removed, or adopted when it is a whole checkpoint.

A SIGKILL can strike between any two steps of a save, a publish or a restore. What can be left behind:

- ``.staging/<stem>-<id>/``: a version staged for upload (hard links: they keep deleted checkpoints on disk);
- ``.remote/``: a dataset version downloaded by ``--resume``;
- ``.<name>.tmp`` (a checkpoint or manifest being written) and ``.<name>.<random>`` (a copy from an input);
- ``kaggle_epoch_*.ckpt`` renamed into place but not yet in the manifest: a complete checkpoint, adopted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.persistence.candidates import entry_from_file
from lightning_app.persistence.manifest import CHECKPOINT_GLOB, Manifest, sha256_of

LEFTOVER_DIRS = (".staging", ".remote")


@dataclass
class Cleanup:
    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    adopted: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        if self.removed:
            names = ", ".join(sorted(p.name for p in self.removed)[:5]) + (", ..." if len(self.removed) > 5 else "")
            freed = f"{self.freed_bytes / 1e6:.1f} MB freed"
            parts.append(f"removed {len(self.removed)} leftovers of a killed run ({names}), {freed}")
        if self.adopted:
            names = ", ".join(self.adopted)
            parts.append(f"adopted {len(self.adopted)} complete checkpoints missing from the manifest ({names})")
        return "; ".join(parts)


def _freed(path: Path) -> int:
    """Bytes that deleting ``path`` gives back: files with no other hard link."""
    paths = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
    total = 0
    for p in paths:
        try:
            stat = p.lstat()
        except OSError:
            continue
        total += stat.st_size if stat.st_nlink == 1 else 0
    return total


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".kaggle_epoch_"))


def clean_folder(folder: Path, manifest: Manifest) -> Cleanup:
    """Remove the leftovers of a killed run from ``folder`` and adopt its orphaned complete checkpoints into
    ``manifest`` (saved when it changed). Run on global rank 0 before the first save, after any restore."""
    cleanup = Cleanup()
    if not folder.is_dir():
        return cleanup
    for entry in os.scandir(folder):
        path = Path(entry.path)
        if entry.name in LEFTOVER_DIRS and entry.is_dir(follow_symlinks=False):
            cleanup.freed_bytes += _freed(path)
            shutil.rmtree(path, ignore_errors=True)
            cleanup.removed.append(path)
        elif _is_temporary(entry.name) and not entry.is_symlink():
            cleanup.freed_bytes += _freed(path)
            if entry.is_dir():  # a checkpoint being written: `.<name>.tmp/archive`
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            cleanup.removed.append(path)
    for path in sorted(folder.glob(CHECKPOINT_GLOB)):
        if path.name in manifest.entries or not path.is_file():
            continue
        entry = entry_from_file(path)  # loads it: a file that does not load is not adopted (and not deleted)
        if entry is not None:
            entry.sha256 = sha256_of(path)
            manifest.add(entry)
            cleanup.adopted.append(path.name)
    if cleanup.adopted:
        manifest.save(folder)
    return cleanup
