"""Test-only callback: what each DDP rank decided (saves, the stop) and how often its ranks agreed, as JSON.

Writes ``consensus-rank<N>.pid`` at train start and ``consensus-rank<N>.json`` at train end, in the working folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from callbacks.checkpoint import KaggleModelCheckpoint
from callbacks.deadline import SessionDeadline


class ConsensusProbe(Callback):
    def __init__(self) -> None:
        self._saves: list[int] = []

    def _callbacks(self, trainer: pl.Trainer) -> tuple[KaggleModelCheckpoint, SessionDeadline]:
        checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, KaggleModelCheckpoint))
        return checkpoint, next(cb for cb in trainer.callbacks if isinstance(cb, SessionDeadline))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(f"consensus-rank{trainer.global_rank}.pid").write_text(str(os.getpid()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._note_save(trainer)

    def _note_save(self, trainer: pl.Trainer) -> None:
        step = self._callbacks(trainer)[0]._last_global_step_saved
        if step > 0 and (not self._saves or self._saves[-1] != step):
            self._saves.append(step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_save(trainer)
        checkpoint, deadline = self._callbacks(trainer)
        consensus = checkpoint.consensus
        report = {
            "saves": self._saves,
            "stopped_at": trainer.global_step,
            "stopped_because": deadline.stopped_because,
            "shared": deadline._consensus is consensus,
            "collectives": consensus.collectives,
            "batches": consensus.batches,
            "every": consensus.every,
        }
        Path(f"consensus-rank{trainer.global_rank}.json").write_text(json.dumps(report))
