"""The Kaggle session this process runs in."""

from __future__ import annotations

import os
from pathlib import Path


def in_kaggle_notebook() -> bool:
    """True inside a Kaggle notebook (the platform sets ``KAGGLE_KERNEL_RUN_TYPE``)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_root() -> Path:
    """Kaggle's folders' root, ``/kaggle`` (``LIGHTNING_APP_KAGGLE_ROOT`` points it elsewhere, for tests)."""
    return Path(os.environ.get("LIGHTNING_APP_KAGGLE_ROOT") or "/kaggle")


def kaggle_input_dir() -> Path:
    """Where attached datasets are mounted: ``/kaggle/input``."""
    return kaggle_root() / "input"


def kaggle_working_dir() -> Path:
    """The session's writable folder: ``/kaggle/working``."""
    return kaggle_root() / "working"
