"""The progress bar: Lightning's tqdm bar, plus where the checkpoint sync stands and how much session is left.

::

    Epoch 3: 100%|████| 32/32 [00:04<00:00, train_loss=1.42, val_loss=1.39, sync=v4@96 uploading step 128, left=8h41m]

Both items are read from the trainer's callbacks without importing them:

- ``sync``: the ``state.bar_text`` (a `SyncState`'s) of the first callback that has one
  (`callbacks.kaggle_sync.KaggleDatasetSync`: last published version and step, an upload, retrying, NOT SAFE);
- ``left``: the first callback with a ``remaining_seconds()`` method returning a number (the session deadline).

Either is left out when no callback provides it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from typing_extensions import override

log = logging.getLogger("lightning_app.progress_bar")

#: Refresh every N batches inside a Kaggle notebook: every update of a ``!python`` cell is kept in its output.
KAGGLE_REFRESH_RATE = 20


def format_remaining(seconds: float) -> str:
    """``8h41m``, ``12m05s``, ``45s``; ``0s`` once the time is up."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def session_items(trainer: pl.Trainer) -> dict[str, str]:
    """``{"sync": ..., "left": ...}`` from the trainer's callbacks; a failing callback is skipped, never raised."""
    items: dict[str, str] = {}
    for callback in trainer.callbacks:
        if "sync" not in items:
            text = getattr(_read(callback, "state"), "bar_text", None)
            if isinstance(text, str) and text:
                items["sync"] = text
        if "left" not in items:
            seconds = _ask(callback, "remaining_seconds")
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                items["left"] = format_remaining(seconds)
    return items


def _ask(callback: object, method: str) -> Any:
    function = getattr(callback, method, None)
    if not callable(function):
        return None
    try:
        return function()
    except Exception:  # noqa: BLE001 - the progress bar must never stop training
        log.debug("progress bar: %r.%s() failed", callback, method, exc_info=True)
        return None


def _read(callback: object, attribute: str) -> Any:
    try:
        return getattr(callback, attribute, None)
    except Exception:  # noqa: BLE001 - the progress bar must never stop training
        log.debug("progress bar: %r.%s failed", callback, attribute, exc_info=True)
        return None


class SyncProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` that also shows the sync state (``sync=``) and the session's remaining time (``left=``).

    The experiment's version (``v_num``) is dropped: here it is the experiment name, too long for a bar.

    Example::

        trainer = pl.Trainer(callbacks=[SyncProgressBar(refresh_rate=20)])
    """

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items.update(session_items(trainer))
        return items


def use_sync_progress_bar(trainer: pl.Trainer) -> bool:
    """Put a `SyncProgressBar` in place of Lightning's own default bar (tqdm, or Rich when installed).

    A bar of another class (a user's subclass) is left alone, and so is a trainer without a bar
    (``--trainer.enable_progress_bar false``). Inside a Kaggle notebook a refresh rate of 1 becomes
    `KAGGLE_REFRESH_RATE`. Returns True when the bar was replaced.
    """
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) not in (TQDMProgressBar, RichProgressBar):
            continue
        refresh_rate = getattr(callback, "refresh_rate", 1) or 1
        if refresh_rate == 1 and os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
            refresh_rate = KAGGLE_REFRESH_RATE
        position = getattr(callback, "process_position", 0)
        trainer.callbacks[index] = SyncProgressBar(refresh_rate=refresh_rate, process_position=position)
        return True
    return False
