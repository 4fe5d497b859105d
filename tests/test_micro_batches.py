"""One device running 2 canonical micro-batches computes DDP's gradient for 2 ranks, bit for bit, in-process: the
gradient a real Trainer hands to the optimizer equals, tensor by tensor, what 2 DDP ranks would all-reduce (each
rank's own accumulated gradient, multiplied by 1/2 by DDP's reducer, then added), with each canonical rank's
dropout drawn from its own stream. ``accumulate_grad_batches`` 2 needs each canonical rank's sum kept apart.

And a resume with another ``--data.batch_size`` (another global batch) keeps the sample order: each canonical
shard goes on from its place, and Lightning's batch counters are recounted in the new batches."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_app.data import ResumableSampler, SyntheticDataModule
from lightning_app.module import LanguageModel
from lightning_app.rng import RandomStreams

MODEL = {"pe_type": "rope", "model_size": "tiny", "vocab_size": 16, "d_model": 32, "n_layers": 1, "dropout": 0.2}
DATA = {"vocab_size": 16, "seq_len": 16, "batch_size": 4, "num_train_sequences": 64, "num_val_sequences": 8}
#: A Trainer with nothing but training: no logger, checkpoints, progress bar, summary or validation.
BARE_TRAINER = dict(
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
    use_distributed_sampler=False,
)


class Capture(Callback):
    """The initial weights, every batch of the first step, and the gradient the optimizer gets."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((batch[0].clone(), batch[1].clone()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _ddp_gradient(capture: Capture, accumulate: int, seed: int) -> dict[str, torch.Tensor]:
    """What 2 DDP ranks all-reduce: rank r accumulates the loss / accumulate of its canonical micro-batches (rows
    ``[4r, 4r + 4)`` of each batch here), drawing from its canonical stream; the reducer multiplies each rank's
    gradient by 1/2 and sums."""
    model = LanguageModel(**MODEL)
    model.load_state_dict(capture.weights)
    model.train()
    streams = RandomStreams()
    streams.ensure([0, 1], base_seed=seed)
    per_rank = []
    for rank in (0, 1):
        model.zero_grad(set_to_none=True)
        for inputs, targets in capture.batches:
            rows = slice(4 * rank, 4 * rank + 4)
            with streams.drawing(rank):
                loss, _ = model._loss((inputs[rows], targets[rows]))
            (loss / accumulate).backward()
        per_rank.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return {n: torch.mul(per_rank[0][n], 0.5) + torch.mul(per_rank[1][n], 0.5) for n in per_rank[0]}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_one_device_hands_the_optimizer_ddps_gradient_for_two_ranks(accumulate):
    pl.seed_everything(11)
    capture = Capture()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        accumulate_grad_batches=accumulate,
        **BARE_TRAINER,
        callbacks=[capture],
    )
    trainer.fit(LanguageModel(**MODEL), datamodule=SyntheticDataModule(**DATA))  # 2 canonical ranks by default
    assert len(capture.batches) == accumulate and capture.batches[0][0].shape == (8, 16)
    expected = _ddp_gradient(capture, accumulate, int(os.environ["PL_GLOBAL_SEED"]))
    assert capture.grads.keys() == expected.keys()
    for name, grad in capture.grads.items():
        assert torch.equal(grad, expected[name]), f"{name}: max abs diff {(grad - expected[name]).abs().max()}"


class SaveAt(Callback):
    """Saves a checkpoint after step ``step`` (mid-epoch), and records every batch's rows with its epoch."""

    def __init__(self, step: int | None = None, path: str = "") -> None:
        self.step, self.path = step, path
        self.seen: list[tuple[int, list[tuple[int, ...]]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, [tuple(row.tolist()) for row in batch[0]]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _fit_tiny(callback: Callback, batch_size: int, ckpt_path: str | None = None) -> None:
    pl.seed_everything(5)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        **BARE_TRAINER,
        callbacks=[callback],
    )
    data = SyntheticDataModule(**{**DATA, "num_train_sequences": 48, "batch_size": batch_size})
    trainer.fit(LanguageModel(**MODEL), datamodule=data, ckpt_path=ckpt_path)


@pytest.mark.parametrize("new_batch", [3, 8])  # a partial batch left; fewer, larger batches
def test_a_changed_global_batch_keeps_the_sample_order_and_the_epochs(tmp_path, caplog, new_batch):
    path = str(tmp_path / "step2.ckpt")
    _fit_tiny(SaveAt(step=2, path=path), batch_size=4)  # 48 sequences, 2 canonical shards of 24: 6 batches of 8
    resumed = SaveAt()
    with caplog.at_level("INFO", logger="lightning_app"):
        _fit_tiny(resumed, batch_size=new_batch, ckpt_path=path)
    line = f"Global batch 8 -> {2 * new_batch} (--data.batch_size 4 -> {new_batch}): the sample order is kept"
    assert sum(r.getMessage().startswith(line) for r in caplog.records) == 1
    # The rest of epoch 0 from each canonical shard's place (8 of 24 taken), then a whole epoch 1, in new batches.
    dataset = SyntheticDataModule(**{**DATA, "num_train_sequences": 48}).train_dataset
    for epoch, position in ((0, 8), (1, 0)):
        sampler = ResumableSampler(48, seed=1234, canonical_ranks=2, micro_batch_size=new_batch)
        expected = [tuple(dataset[i][0].tolist()) for i in sampler.shard(epoch, position)]
        seen = [row for e, rows in resumed.seen if e == epoch for row in rows]
        assert seen == expected, epoch
    assert len([e for e, _ in resumed.seen if e == 0]) == (24 - 8) // new_batch
