"""A test-only callback that puts each DDP rank on its own random stream, as per-rank randomness would."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class DrawPerRank(Callback):
    """In a fresh run (not on resume), rank r draws ``1 + r`` numbers from random, NumPy and torch at train start."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            n = 1 + trainer.global_rank
            [random.random() for _ in range(n)]
            np.random.rand(n)
            torch.rand(n)
