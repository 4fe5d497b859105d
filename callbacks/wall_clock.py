"""``wall_time``: the seconds of training so far, kept by Lightning's `Timer` and logged at every validation."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from typing_extensions import override

from lightning_app.experiment import WALL_TIME_KEY

#: The callback-state key of the clock that checkpoints written before `WallClock` carry: ``{"elapsed": seconds}``.
LEGACY_STATE_KEY = "TrainingClock"


class WallClock(Timer):
    """A `Timer` without a deadline that logs ``wall_time`` at the end of every validation during ``fit``.

    `Timer` keeps the elapsed training time in the checkpoint, so it adds up across sessions: a resumed run
    continues the clock from its checkpoint (time spent after that checkpoint by a session that died is not
    counted, as its work is redone). A checkpoint from before this class carries the old ``TrainingClock`` state
    instead; its seconds are read into the clock.
    """

    def __init__(self) -> None:
        super().__init__(duration=None)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # A Python float: no device sync. sync_dist averages the ranks' clocks (and silences Lightning's warning).
        pl_module.log(WALL_TIME_KEY, round(self.time_elapsed(), 3), sync_dist=True)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls this before load_state_dict, which it skips when the checkpoint has no state for us.
        states = checkpoint.get("callbacks", {})
        if self.state_key not in states and LEGACY_STATE_KEY in states:
            self._offset = float(states[LEGACY_STATE_KEY].get("elapsed", 0.0))
