"""``--resume``: which checkpoint a ``fit`` continues from, made local before ``Trainer.fit(ckpt_path=...)``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from lightning_app.errors import ConfigError
from lightning_app.persistence import restore
from lightning_app.persistence.manifest import CHECKPOINT_GLOB
from lightning_app.persistence.store_protocol import CheckpointStore

log = logging.getLogger("lightning_app")

#: Set by the process that resolved ``--resume``, read by the DDP processes Lightning launches from it.
RESUME_ENV = "LIGHTNING_APP_RESUME_FROM"


def resolve_resume(
    resume: str | None,
    folder: Path,
    options: restore.RestoreOptions,
    settings: dict[str, object],
    store: Callable[[], CheckpointStore | None],
) -> str | None:
    """The local checkpoint path to resume from, or None to start fresh.

    Args:
        resume: ``--resume``: None (start fresh), ``"auto"`` (the newest run's newest good checkpoint, from the
            local folder, the inputs or the dataset: see `restore.restore_newest`) or a checkpoint file.
        folder: the writable checkpoint folder the chosen file is copied into.
        options: ``--restore.*``.
        settings: the requested architecture; a checkpoint made for another is refused in one line.
        store: makes the sync's store (None without one), called only when the dataset is to be looked at.
    """
    if resume is None:
        if any(folder.glob(CHECKPOINT_GLOB)):
            log.info(f"Starting fresh: checkpoints in {folder} are left alone (pass --resume to continue)")
        return None
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and RESUME_ENV in os.environ:
        return os.environ[RESUME_ENV] or None  # a DDP process launched by the one that resolved it
    if resume == "auto":
        restored = restore.restore_newest(folder, options, store(), settings)
        if restored is None:
            log.info("No checkpoint found to resume from: starting fresh")
            os.environ[RESUME_ENV] = ""
            return None
        chosen, local = restored
    else:
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"--resume: got {resume!r}; expected an existing checkpoint file, or no value")
        chosen = next((c for c in restore.scan_folder(path.parent, "local") if c.path.name == path.name), None)
        if chosen is None:
            raise ConfigError(f"--resume: {resume!r} is not a checkpoint that loads")
        restore.check_settings(chosen, settings)
        local = restore.make_local(chosen, folder)
    log.info(restore.explain(chosen))
    os.environ[RESUME_ENV] = str(local)
    return str(local)
