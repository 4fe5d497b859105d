"""What a manifest entry records about a checkpoint: where training stood, its settings and its metrics."""

from __future__ import annotations

import os
import time
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_app.persistence.folder import CheckpointFolder
from lightning_app.persistence.manifest import CheckpointEntry


def new_entry(trainer: pl.Trainer, name: str, **fields: Any) -> CheckpointEntry:
    """The entry of checkpoint ``name`` about to be saved, with ``fields`` (``run_id``, ``end_of_epoch``...);
    its size and hash are added once the file is written."""
    return CheckpointEntry(
        file=name,
        epoch=trainer.current_epoch,
        global_step=trainer.global_step,
        timestamp=CheckpointFolder.timestamp_of(name),
        written_at=round(time.time(), 6),
        total_steps=int(getattr(trainer.lightning_module, "total_steps", 0) or 0),
        metrics=plain_metrics(trainer.callback_metrics),
        **fields,
    )


def training_config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, object]:
    """The resolved settings a run trains with besides its architecture: the model's and the data's
    hyperparameters, the seed and how the trainer steps; plain values only (a manifest is JSON)."""
    config: dict[str, object] = {f"model.{k}": v for k, v in pl_module.hparams.items()}
    datamodule = trainer.datamodule
    if datamodule is not None:
        config.update({f"data.{k}": v for k, v in datamodule.hparams.items()})
    config.update(
        {
            "seed": os.environ.get("PL_GLOBAL_SEED"),
            "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
            "trainer.precision": str(trainer.precision),
            "trainer.world_size": trainer.world_size,
        }
    )
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v) for k, v in sorted(config.items())}


def plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics as plain floats (rounded to 6 decimals), for a manifest entry."""
    plain = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, (int, float)):
            plain[key] = round(float(value), 6)
    return plain
