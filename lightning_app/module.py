"""The LightningModule: a thin layer over the pure `TransformerLM` (loss, metrics, optimizer, RNG in/out)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from lightning_app.errors import bad_value
from lightning_app.experiment import ARCHITECTURE_KEYS
from lightning_app.model import PeType, TransformerConfig, TransformerLM
from lightning_app.rng import (
    capture_rng_state,
    pack_rank_states,
    rank_state,
    restore_rng_state,
    unmatched_ranks_message,
)
from lightning_app.schedule import WarmupCosine

log = logging.getLogger("lightning_app")

ModelSize = Literal["tiny", "small", "base", "large"]


class LanguageModel(pl.LightningModule):
    """Next-token language model over a decoder-only Transformer.

    Every constructor argument is a plain type and lands in ``hparams``, so checkpoints load with
    ``torch.load(weights_only=True)`` and the model can be rebuilt from a checkpoint alone.

    Args:
        pe_type: positional encoding: sinusoidal, learned, rope, alibi or none.
        model_size: size preset: tiny (tests), small (6x512), base (12x768), large (24x1024).
        vocab_size: number of token ids; set from the data (``--data.vocab_size``) by the CLI.
        d_model: width; overrides the preset.
        n_layers: number of blocks; overrides the preset.
        n_heads: attention heads; overrides the preset.
        d_ff: MLP hidden width; overrides the preset.
        max_seq_len: longest sequence the model accepts (bounds only ``learned``); overrides the preset.
        dropout: dropout probability in attention and residual paths.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to matrices only.
        beta2: AdamW's second-moment decay.
        warmup_steps: linear warmup length in optimizer steps.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``.
        compile: run the Transformer through ``torch.compile`` (the checkpoint format does not change).
    """

    def __init__(
        self,
        pe_type: PeType = "sinusoidal",
        model_size: ModelSize = "small",
        vocab_size: int = 256,
        d_model: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        d_ff: int | None = None,
        max_seq_len: int | None = None,
        dropout: float = 0.1,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        beta2: float = 0.95,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise bad_value("--model.lr", lr, "a number > 0")
        if warmup_steps < 0:
            raise bad_value("--model.warmup_steps", warmup_steps, "an integer >= 0")
        if not 0 <= min_lr_ratio <= 1:
            raise bad_value("--model.min_lr_ratio", min_lr_ratio, "a number in [0, 1]")
        self.save_hyperparameters()
        self.config = TransformerConfig.from_preset(
            model_size,
            pe_type=pe_type,
            vocab_size=vocab_size,
            dropout=dropout,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_ff=d_ff,
            max_seq_len=max_seq_len,
        )
        self.model = TransformerLM(self.config)
        # Kept out of the module tree (object.__setattr__ skips nn.Module's registration), so the state_dict
        # holds the weights once, under `model.`, compiled or not.
        object.__setattr__(self, "_forward", torch.compile(self.model) if compile else self.model)
        self.val_perplexity = Perplexity()
        self.val_accuracy = MulticlassAccuracy(num_classes=self.config.vocab_size, average="micro")
        self._rng_to_restore: dict | None = None
        self._train_loss = torch.zeros(())  # the last training step's loss, detached
        self.total_steps = 0  # set with the optimizer, once the trainer is known

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> tuple[LanguageModel, dict]:
        """The model of a checkpoint, in eval mode on ``device``, and its hyperparameters (loaded with
        ``weights_only=True``); a file that is not such a checkpoint is one `ConfigError` line."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            hparams = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
        except Exception as error:
            raise bad_value("CKPT_OR_RUN_DIR", str(path), f"a Lightning checkpoint that loads ({error})") from None
        model = cls(**{**hparams, "compile": False})
        model.load_state_dict(saved["state_dict"])
        return model.to(device).eval(), hparams

    def settings(self) -> dict[str, object]:
        """The resolved architecture: what a checkpoint must share with a run that resumes from it."""
        resolved = {"pe_type": self.hparams.pe_type, "model_size": self.hparams.model_size}
        resolved.update({k: getattr(self.config, k) for k in ARCHITECTURE_KEYS if k not in resolved})
        return resolved

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(tokens)  # (B, T, vocab)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch  # (B, T), (B, T)
        logits = self(inputs)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return loss, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self._train_loss = loss.detach()
        return loss

    def on_train_batch_end(self, outputs, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # Logged here rather than in training_step: only on the steps the logger writes (``self.log`` costs Python
        # work per call; between them the progress bar shows the last value), and after the callbacks, so that a
        # step where one of them stopped training (which the logger also writes) is logged too. As a CPU copy:
        # after every step Lightning turns each progress-bar value into a number, which for a GPU tensor would
        # wait for the GPU each step; this way only the logged steps wait.
        trainer = self.trainer
        every = trainer.log_every_n_steps
        # global_step counts this step's update already: Lightning writes when it is a multiple of `every`.
        if every <= 1 or self.global_step % every == 0 or trainer.should_stop or trainer.fast_dev_run:
            self.log("train_loss", self._train_loss.to("cpu"), prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        targets = batch[1]
        self.val_perplexity.update(logits.float(), targets)
        self.val_accuracy.update(logits.flatten(0, 1), targets.flatten())
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", self.val_perplexity)
        self.log("val_acc", self.val_accuracy)

    test_step = validation_step

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # Fused: one pass over all parameters. Off CUDA, torch's default is a loop over the parameters (65 ms per
        # step for `small` on 2 CPU cores, 12 ms fused; benchmarks/README.md); fused AdamW runs on CPU since 2.4.
        fused = self.device.type == "cuda" or (self.device.type == "cpu" and torch.__version__ >= (2, 4))
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, hp.beta2), fused=fused)
        self.total_steps = self._total_training_steps()  # the schedule's end: the run is finished at this step
        schedule = WarmupCosine(hp.warmup_steps, self.total_steps, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_training_steps(self) -> int:
        """Optimizer steps in the whole run, from plain arithmetic.

        Not `trainer.estimated_stepping_batches`: it builds the train loader before the checkpoint's loader
        state is loaded, and a mid-epoch resume would then replay the epoch from its first batch.
        """
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        per_epoch = trainer.datamodule.num_train_batches(trainer.world_size)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            per_epoch = min(per_epoch, limit)
        elif limit is not None:
            per_epoch = int(per_epoch * limit)
        steps_per_epoch = math.ceil(per_epoch / trainer.accumulate_grad_batches)
        return max(1, steps_per_epoch * max(1, trainer.max_epochs or 1))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Runs on every rank (only rank 0 writes the file): each rank's own state, gathered, keyed by global rank.
        state = capture_rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = pack_rank_states(states)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # After the loaders are built and the sanity check ran (Lightning isolates its RNG use): from here on,
        # the random numbers are those the interrupted run would have drawn next.
        if self._rng_to_restore is None:
            return
        saved, self._rng_to_restore = self._rng_to_restore, None
        if self.global_rank == 0 and (message := unmatched_ranks_message(saved, self.trainer.world_size)):
            log.info(message)
        if (state := rank_state(saved, self.global_rank)) is not None:
            restore_rng_state(state)
