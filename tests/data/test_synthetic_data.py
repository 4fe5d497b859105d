"""SyntheticDataModule: deterministic data with a known loss floor, loaders sharded by rank, and a real Trainer
that resumes (mid-epoch, chained, at an epoch end) on exactly the batches an uninterrupted run saw."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator

from lightning_app.data import SyntheticDataModule
from lightning_app.errors import ConfigError

TINY = {"vocab_size": 8, "seq_len": 4, "batch_size": 4, "num_train_sequences": 26, "num_val_sequences": 4}


def test_same_construction_same_data_and_the_seed_changes_it():
    a, b = SyntheticDataModule(seed=5), SyntheticDataModule(seed=5)
    assert torch.equal(a.successors, b.successors)
    assert all(torch.equal(p, q) for p, q in zip(a.train_dataset[17], b.train_dataset[17]))
    assert all(torch.equal(p, q) for p, q in zip(next(iter(a.train_dataloader())), next(iter(b.train_dataloader()))))
    assert not torch.equal(SyntheticDataModule(seed=6).train_dataset[0][0], a.train_dataset[0][0])


def test_samples_are_shifted_int64_sequences():
    dm = SyntheticDataModule(vocab_size=16, seq_len=32)
    x, y = dm.train_dataset[3]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (32,)
    assert torch.equal(x[1:], y[:-1])
    assert int(x.min()) >= 0 and int(x.max()) < 16
    assert len(dm.train_dataset) == 4096 and len(dm.val_dataset) == 256


def test_loss_floor_is_log_branching_and_the_data_reaches_it():
    dm = SyntheticDataModule(branching=4)
    assert dm.loss_floor == math.log(4)
    pairs = torch.stack([torch.stack(dm.train_dataset[i]) for i in range(len(dm.train_dataset))])  # (N, 2, T)
    x, y = pairs[:, 0].flatten(), pairs[:, 1].flatten()
    counts = torch.bincount(x * dm.vocab_size + y, minlength=dm.vocab_size**2).view(dm.vocab_size, -1).double()
    assert ((counts > 0).sum(dim=1) == 4).all()  # every token has exactly `branching` successors
    p_xy = counts / counts.sum()
    p_y_given_x = counts / counts.sum(dim=1, keepdim=True)
    entropy = -(p_xy[counts > 0] * p_y_given_x[counts > 0].log()).sum().item()
    assert abs(entropy - dm.loss_floor) < 0.01


def test_batches_per_epoch_and_identity():
    dm = SyntheticDataModule(canonical_ranks=1)  # one canonical rank: a batch per device (tests/data/test_canonical.py)
    assert dm.num_train_batches() == len(dm.train_dataloader()) == 4096 // 32
    assert dm.num_train_batches(world_size=3) == (4096 // 3) // 32
    identity = dm.identity()
    assert identity["class"] == "SyntheticDataModule" and identity["branching"] == 4 and identity["seed"] == 1234
    assert json.loads(json.dumps(identity)) == identity


def _fake_trainer(world_size: int, rank: int, processed_epochs: int) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed_epochs))
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        accelerator=CPUAccelerator(),
        fit_loop=SimpleNamespace(epoch_progress=progress),
    )


def test_loaders_shard_by_rank_and_take_the_epoch_from_the_trainer():
    train, val = {}, {}
    for rank in range(2):
        dm = SyntheticDataModule(**TINY)
        dm.trainer = _fake_trainer(2, rank, processed_epochs=3)
        loader = dm.train_dataloader()
        assert loader.sampler.epoch == 3 and not loader.pin_memory
        assert len(loader) == dm.num_train_batches(2) == 3
        train[rank] = {tuple(x.tolist()) for batch, _ in loader for x in batch}
        val[rank] = [tuple(x.tolist()) for batch, _ in dm.val_dataloader() for x in batch]
    assert len(train[0]) == len(train[1]) == 12 and not train[0] & train[1]
    assert len(val[0]) == len(val[1]) == 2 and not set(val[0]) & set(val[1])


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"vocab_size": 1}, "--data.vocab_size"),
        ({"seq_len": 0}, "--data.seq_len"),
        ({"batch_size": 0}, "--data.batch_size"),
        ({"num_train_sequences": 0}, "--data.num_train_sequences"),
        ({"num_train_sequences": 8, "batch_size": 16}, "--data.num_train_sequences"),
        ({"num_val_sequences": 0}, "--data.num_val_sequences"),
        ({"branching": 0}, "--data.branching"),
        ({"branching": 65}, "--data.branching"),
        ({"num_workers": -1}, "--data.num_workers"),
        ({"seed": "x"}, "--data.seed"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_flag(kwargs, flag):
    with pytest.raises(ConfigError) as error:
        SyntheticDataModule(**kwargs)
    message = str(error.value)
    assert message.startswith(f"{flag}: got {next(iter(kwargs.values()))!r}") or flag in message
    assert "\n" not in message


class Recorder(pl.LightningModule):
    """Records every training batch; saves checkpoints from on_train_batch_end at the given global steps and
    from on_train_epoch_end after the given epochs."""

    def __init__(self, save_at: dict[int, str] | None = None, save_after_epoch: dict[int, str] | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.save_at = save_at or {}
        self.save_after_epoch = save_after_epoch or {}
        self.seen: list[list[list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].tolist())
        return (self.weight * batch[0].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.global_step in self.save_at:
            self.trainer.save_checkpoint(self.save_at[self.trainer.global_step])

    def on_train_epoch_end(self):
        if self.current_epoch in self.save_after_epoch:
            self.trainer.save_checkpoint(self.save_after_epoch[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: Recorder, num_workers: int, ckpt_path: str | None = None) -> Recorder:
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    # One canonical rank: the loader's batches are the Recorder's batches (test_canonical.py runs two per batch).
    data = SyntheticDataModule(**TINY, num_workers=num_workers, canonical_ranks=1)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_resumes_on_exactly_the_remaining_batches(tmp_path, num_workers):
    # 6 batches per epoch, 3 epochs: step 3 is mid epoch 0, step 8 mid epoch 1.
    paths = {step: str(tmp_path / f"step{step}.ckpt") for step in (3, 8)}
    epoch_end = str(tmp_path / "epoch0.ckpt")
    full = _fit(Recorder(save_at=paths, save_after_epoch={0: epoch_end}), num_workers).seen
    assert len(full) == 18 and full[:6] != full[6:12]
    state = torch.load(paths[3], weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state  # Lightning saved the loader's state, and it loads with weights_only=True

    chained = str(tmp_path / "from3_step5.ckpt")
    assert _fit(Recorder(save_at={5: chained}), num_workers, ckpt_path=paths[3]).seen == full[3:]
    # A checkpoint written in the same epoch by a resumed run resumes exactly too (the position stays right).
    assert _fit(Recorder(), num_workers, ckpt_path=chained).seen == full[5:]
    assert _fit(Recorder(), num_workers, ckpt_path=paths[8]).seen == full[8:]
    # At an epoch end Lightning does not restore the loader: the epoch set where the loader is built counts.
    assert _fit(Recorder(), num_workers, ckpt_path=epoch_end).seen == full[6:]


def test_a_checkpoint_on_the_last_batch_resumes_at_the_next_epoch(tmp_path):
    """Resuming from a checkpoint saved on an epoch's last batch, Lightning restores `is_last_batch`, finishes that
    epoch at once and, still "resuming", makes no new iterator for the next one. The sampler reads a saved place
    with less than a batch left (here 24 of 26 indices, batches of 4) as the next epoch's start, so the restored
    iterator is the next epoch's. (This was a strict xfail while the sampler read only the exact end that way.)"""
    path = str(tmp_path / "step6.ckpt")
    full = _fit(Recorder(save_at={6: path}), 0).seen
    assert _fit(Recorder(), 0, ckpt_path=path).seen == full[6:]
