"""`16-mixed`: the gradient scaler's state goes through the snapshot into the checkpoint and back on resume.

Lightning refuses `16-mixed` on a CPU accelerator, but its `MixedPrecision` plugin runs fp16 autocast with a CPU
`GradScaler`: the same plugin, the same `state_dict` keys and the same checkpoint path as on a T4.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from callbacks.checkpoint import KaggleModelCheckpoint
from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel

STATE_KEY = MixedPrecision.__qualname__  # where Lightning keeps a precision plugin's state in a checkpoint


def _trainer(tmp_path: Path, checkpoint: KaggleModelCheckpoint, max_steps: int) -> tuple[pl.Trainer, MixedPrecision]:
    # A scale that grows every 2 steps, so the state after a few steps differs from a fresh scaler's.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        plugins=[plugin],
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    return trainer, plugin


def _parts():
    pl.seed_everything(3)
    model = LanguageModel(pe_type="rope", model_size="tiny", vocab_size=16, d_model=32, n_layers=1, warmup_steps=2)
    # 2 canonical ranks (the default) x batch 4: 8 sequences per step, 8 steps per epoch.
    data = SyntheticDataModule(vocab_size=16, seq_len=16, batch_size=4, num_train_sequences=64, num_val_sequences=16)
    return model, data


def test_the_scaler_state_round_trips_through_the_snapshot_and_the_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    checkpoint = KaggleModelCheckpoint(dirpath=str(folder), every_n_train_steps=5)  # 8 steps per epoch
    trainer, plugin = _trainer(tmp_path, checkpoint, max_steps=5)
    trainer.fit(*_parts())
    checkpoint.wait_for_writes()
    saved_at_5 = plugin.scaler.state_dict()
    assert saved_at_5["scale"] > 2.0**8, "the scale never grew: nothing is being tested"

    (path,) = folder.glob("kaggle_epoch_*.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state[STATE_KEY] == saved_at_5

    resumed = KaggleModelCheckpoint(dirpath=str(folder))
    trainer, plugin = _trainer(tmp_path, resumed, max_steps=5)
    model, data = _parts()
    trainer.fit(model, datamodule=data, ckpt_path=str(path))  # restores, then stops at once: max_steps reached
    assert trainer.global_step == 5
    assert plugin.scaler.state_dict() == saved_at_5
