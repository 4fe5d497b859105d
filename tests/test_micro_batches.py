"""One device running 2 canonical micro-batches computes DDP's gradient for 2 ranks, bit for bit, in-process: the
gradient a real Trainer hands to the optimizer equals, tensor by tensor, what 2 DDP ranks would all-reduce (each
rank's own accumulated gradient, multiplied by 1/2 by DDP's reducer, then added), with each canonical rank's
dropout drawn from its own stream. ``accumulate_grad_batches`` 2 needs each canonical rank's sum kept apart."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel
from lightning_app.rng import RandomStreams

MODEL = {"pe_type": "rope", "model_size": "tiny", "vocab_size": 16, "d_model": 32, "n_layers": 1, "dropout": 0.2}
DATA = {"vocab_size": 16, "seq_len": 16, "batch_size": 4, "num_train_sequences": 64, "num_val_sequences": 8}


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
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[capture],
    )
    trainer.fit(LanguageModel(**MODEL), datamodule=SyntheticDataModule(**DATA))  # 2 canonical ranks by default
    assert len(capture.batches) == accumulate and capture.batches[0][0].shape == (8, 16)
    expected = _ddp_gradient(capture, accumulate, int(os.environ["PL_GLOBAL_SEED"]))
    assert capture.grads.keys() == expected.keys()
    for name, grad in capture.grads.items():
        assert torch.equal(grad, expected[name]), f"{name}: max abs diff {(grad - expected[name]).abs().max()}"
