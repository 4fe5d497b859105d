"""A linear model on fixed data, with the `settings()` a `LanguageModel` has: a real Trainer run in well under a
second, for tests of callbacks and loggers."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

SETTINGS = {"pe_type": "rope", "model_size": "tiny"}


class TinyRegression(pl.LightningModule):
    """A linear model on fixed data: a real Trainer run in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def settings(self) -> dict[str, object]:
        return dict(SETTINGS)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}

    def _loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=generator)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    train_dataloader = val_dataloader = _loader
