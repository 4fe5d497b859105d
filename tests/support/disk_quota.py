"""Test-only: a checkpoint folder whose disk holds only ``limit_bytes``, as a full ``/kaggle/working`` would.

Added to a real CLI run with a second config file (`quota_config`), like the kill switches: a checkpoint write that
would take the folder past the limit fails with ENOSPC, and ``shutil.disk_usage`` reports what is left of the
limit for paths inside the folder. Usage counts each file once however many hard links it has (a staged upload
links a checkpoint: the blocks are shared, as on a real disk). Production code has no hook for it.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback

from lightning_app.persistence import snapshot

_Usage = namedtuple("_Usage", "total used free")


def usage(folder: Path) -> int:
    """Bytes of the files under ``folder``, each inode counted once."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        try:
            stat = path.lstat()
        except OSError:
            continue
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


class DiskQuota(Callback):
    """Limit the checkpoint folder ``folder`` (relative to the working directory) to ``limit_bytes``."""

    def __init__(self, limit_bytes: int, folder: str = "checkpoints") -> None:
        self.limit = limit_bytes
        self.folder = Path(folder).resolve()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        real_write, real_usage = snapshot.write_atomically, shutil.disk_usage
        limit, folder = self.limit, self.folder

        def write_atomically(state, path: Path):
            written = real_write(state, path)  # written, then measured: a real disk also fails part-way
            if usage(folder) > limit:
                path.unlink()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return written

        def disk_usage(path):
            if Path(path).resolve().is_relative_to(folder):
                used = usage(folder)
                return _Usage(limit, used, max(0, limit - used))
            return real_usage(path)

        snapshot.write_atomically = write_atomically
        shutil.disk_usage = disk_usage


def quota_config(folder: Path, limit_bytes: int) -> Path:
    """A config file that adds `DiskQuota` to ``trainer.callbacks``."""
    path = folder / f"quota_{limit_bytes}.yaml"
    callback = {"class_path": "tests.support.disk_quota.DiskQuota", "init_args": {"limit_bytes": limit_bytes}}
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    return path
