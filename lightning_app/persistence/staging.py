"""Stage exactly what one version holds: the newest checkpoints (and, when asked, the best) and their manifest.

Files are hard-linked (copied where links are impossible), so local retention may delete a checkpoint while
its upload runs, and nothing else in the checkpoint folder (logs, ``kaggle.json``, stray files) is uploaded.
Each publish gets a fresh folder: the kaggle client caches resumable uploads by path, name, size and mtime.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from lightning_app.persistence.manifest import CheckpointEntry, Manifest


def stage_version(
    folder: Path,
    manifest: Manifest,
    upload_last: int,
    staging_root: Path,
    run_id: str | None = None,
    also: Sequence[str] = (),
) -> tuple[Path, list[str]]:
    """Link the newest ``upload_last`` checkpoints of ``folder`` (of run ``run_id`` only, when given), the
    checkpoints named in ``also`` (e.g. the best one), and a manifest of just them into a new folder.

    Returns the folder and the checkpoint file names in it, newest first, then those of ``also``.
    """
    entries: list[CheckpointEntry] = [e for e in manifest.newest_first(run_id) if (folder / e.file).is_file()]
    chosen = [e.file for e in entries[:upload_last]]
    chosen += [name for name in also if name not in chosen and (folder / name).is_file()]
    target = staging_root / f"{Path(chosen[0]).stem if chosen else 'empty'}-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True)
    for name in chosen:
        try:
            os.link(folder / name, target / name)
        except OSError:
            shutil.copy2(folder / name, target / name)
    manifest.subset(chosen).save(target)
    return target, chosen


def discard(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)
