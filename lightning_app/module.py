"""The LightningModule: a thin layer over the pure `TransformerLM` (loss, metrics, optimizer, RNG in/out, and the
canonical micro-batches of each training batch)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from lightning_app.data.canonical import CHECKPOINT_KEY, Layout, MicroBatch, saved_layout
from lightning_app.data.datamodule import TokenWindowDataModule
from lightning_app.data.loader import consumed_position
from lightning_app.errors import bad_value
from lightning_app.experiment import ARCHITECTURE_KEYS
from lightning_app.model import PeType, TransformerConfig, TransformerLM
from lightning_app.rng import (
    RandomStreams,
    capture_rng_state,
    pack_rank_states,
    rank_state,
    restore_rng_state,
    saved_streams,
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
        # The canonical micro-batches this process runs in each training batch (None: the batch as it comes, for
        # a data module that has no canonical layout), their random streams, and where their gradients add up.
        self._layout: Layout | None = None
        self._micro_batches: list[MicroBatch] | None = None
        self._streams = RandomStreams()
        self._separate_sums: _SeparateGradientSums | None = None
        self._zeroed_in_step = False
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
        """The loss of this process's canonical micro-batches of the batch (`lightning_app.data.canonical`).

        Each micro-batch runs its own forward with dropout drawn from its canonical rank's stream, its mean loss
        weighted 1/m (m micro-batches here, so that DDP's mean over the devices is the mean over the canonical
        ranks). All but the last run their backward here; the last is returned for Lightning's backward, so that
        the gradients add up in the order DDP adds them. The logged ``train_loss`` is canonical rank 0's.
        """
        micro_batches = self._micro_batches
        if micro_batches is None:
            loss, _ = self._loss(batch)
            self._train_loss = loss.detach()
            return loss
        accumulate = self.trainer.accumulate_grad_batches
        several = len(micro_batches) > 1
        if several and batch_idx % accumulate == 0:
            # Lightning zeroes the gradients after training_step, which would drop those of the backward passes
            # run below: zero them here instead (`optimizer_zero_grad` then skips this step's zeroing).
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad()
            self._zeroed_in_step = True
            if self._separate_sums is not None:
                self._separate_sums.reset()
        inputs, targets = batch  # (B, T), (B, T): this process's share of the round
        last = len(micro_batches) - 1
        for index, micro in enumerate(micro_batches):
            whole = micro.start == 0 and micro.stop == inputs.shape[0]
            part = batch if whole else (inputs[micro.start : micro.stop], targets[micro.start : micro.stop])
            if self._separate_sums is not None:
                self._separate_sums.activate(index)
            with self._streams.drawing(micro.stream):
                loss, _ = self._loss(part)
            if index == 0:
                self._train_loss = loss.detach()
            if micro.weight != 1.0:
                loss = loss * micro.weight  # 1/m: exact for m = 2
            if index == last:
                if self._separate_sums is not None and not self.trainer.fit_loop._should_accumulate():
                    self._separate_sums.add_after_backward = True  # Lightning's backward is the step's last
                return loss
            self._backward_now(loss / accumulate)  # as Lightning scales the loss it gets back
        raise AssertionError("unreachable: a layout has at least one micro-batch")

    def _backward_now(self, loss: torch.Tensor) -> None:
        """The backward of a micro-batch that is not the batch's last, as Lightning runs its own backward.

        Through the precision plugin (the loss scaler of ``16-mixed``, the backward hooks), but not through the
        strategy: under DDP this runs inside DDP's forward, where the reducer does not yet expect gradients, so
        they accumulate locally and are all-reduced with the last micro-batch's, once.
        """
        precision = self.trainer.precision_plugin
        loss = precision.pre_backward(loss, self)
        precision.backward(loss, self, None)
        precision.post_backward(loss, self)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._zeroed_in_step:  # this step's first micro-batches already put their gradients there
            self._zeroed_in_step = False
            return
        optimizer.zero_grad()

    def on_after_backward(self) -> None:
        if self._separate_sums is not None and self._separate_sums.add_after_backward:
            # Before the loss scaler unscales and before clipping: the gradient is then DDP's for C ranks.
            self._separate_sums.add_into_grad()

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
        # Runs on every rank (only rank 0 writes the file): each rank's own state, gathered, keyed by global rank,
        # and the streams of the canonical ranks each rank ran, keyed by canonical rank.
        own_ids = {micro.stream for micro in self._micro_batches or ()}
        mine = (capture_rng_state(), {i: s for i, s in self._streams.states.items() if i in own_ids})
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        streams = dict(self._streams.states)  # streams no rank runs now keep the state they were loaded with
        for _, owned in gathered:
            streams.update(owned)
        checkpoint["rng_states"] = pack_rank_states([state for state, _ in gathered], streams)
        layout = self._layout or self._resolve_layout()
        if layout is not None:
            checkpoint[CHECKPOINT_KEY] = layout.to_checkpoint(str(self.trainer.precision))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        # Before the loops, the loaders and the optimizer's schedule exist: the run's canonical ranks from the
        # checkpoint, so that every step takes the same samples on any number of devices.
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, TokenWindowDataModule) or trainer.state.fn != TrainerFn.FITTING:
            return
        saved = saved_layout(checkpoint)
        message = datamodule.resume_layout(saved)
        if message and trainer.global_rank == 0:
            log.info(message)
        if saved.micro_batch_size is not None and saved.micro_batch_size != datamodule.batch_size:
            shard_length = datamodule.num_train_windows // saved.canonical_ranks
            _recount_batches(checkpoint, shard_length, datamodule.batch_size)

    def _resolve_layout(self) -> Layout | None:
        datamodule = getattr(self._trainer, "datamodule", None)
        return datamodule.layout() if isinstance(datamodule, TokenWindowDataModule) else None

    def on_train_start(self) -> None:
        # After the loaders are built and the sanity check ran (Lightning isolates its RNG use): from here on,
        # the random numbers are those the interrupted run would have drawn next.
        base_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))  # before a restore changes it
        self._layout = self._resolve_layout()
        self._micro_batches = self._layout.micro_batches() if self._layout is not None else None
        self._separate_sums = None
        several = self._micro_batches is not None and len(self._micro_batches) > 1
        if several and self._layout.exact and self.trainer.accumulate_grad_batches > 1:
            self._separate_sums = _SeparateGradientSums(self.parameters(), len(self._micro_batches))
        saved, self._rng_to_restore = self._rng_to_restore, None
        if saved is not None:
            if self.global_rank == 0 and (message := unmatched_ranks_message(saved, self.trainer.world_size)):
                # With canonical streams the training's random numbers do not depend on the process's state.
                log.log(logging.DEBUG if self._micro_batches is not None else logging.INFO, message)
            if (state := rank_state(saved, self.global_rank)) is not None:
                restore_rng_state(state)
            self._streams.load(saved_streams(saved))
        if self._micro_batches is not None:
            self._streams.ensure(sorted({micro.stream for micro in self._micro_batches}), base_seed)


class _SeparateGradientSums:
    """Each canonical rank's gradients accumulated apart over the step's batches, added at its last backward.

    With ``accumulate_grad_batches`` > 1, DDP's ranks each accumulate their own gradient and the all-reduce adds
    them at the end: ``(a0 + a1) + (b0 + b1)``. One process accumulating both canonical ranks in one ``.grad``
    would add ``((a0 + b0) + a1) + b1``, which rounds differently. So each canonical rank's sum lives in its own
    tensors (``.grad`` is swapped, not copied) and they are added once, after the step's last backward. Costs one
    more copy of the gradients; used only where it makes the run bit-exact (one device, 2 canonical ranks).
    """

    def __init__(self, parameters, count: int) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.count = count
        self.reset()

    def reset(self) -> None:
        self.sums: list[list[torch.Tensor | None] | None] = [None] * self.count
        self.active: int | None = None
        self.add_after_backward = False

    def activate(self, index: int) -> None:
        """Make canonical micro-batch ``index``'s sum the one its backward adds to."""
        if self.active == index:
            return
        if self.active is not None:
            self.sums[self.active] = [p.grad for p in self.parameters]
        grads = self.sums[index] or [None] * len(self.parameters)
        for parameter, grad in zip(self.parameters, grads, strict=True):
            parameter.grad = grad
        self.sums[index] = None
        self.active = index

    def add_into_grad(self) -> None:
        """``.grad`` = the sum over canonical ranks (for 2: one addition, in either order the same)."""
        for index, grads in enumerate(self.sums):
            if grads is None or index == self.active:
                continue
            sums, others = [], []
            for parameter, grad in zip(self.parameters, grads, strict=True):
                if grad is None:
                    continue
                if parameter.grad is None:
                    parameter.grad = grad
                else:
                    sums.append(parameter.grad)
                    others.append(grad)
            if sums:
                torch._foreach_add_(sums, others)  # one launch for all, the same addition element by element
        self.reset()


def _recount_batches(checkpoint: dict, shard_length: int, batch_size: int) -> None:
    """Lightning's batch counters of the saved epoch, in batches of the new ``--data.batch_size``.

    The sampler keeps its place (the samples already taken from each canonical shard); the counters must agree
    with it, or the epoch would end early or late. A partial batch rounds down (the loader then ends the epoch);
    a place with less than a batch left counts as the epoch's end, as the sampler reads it.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop")
    if not loops:
        return
    position = consumed_position(loops.get("state_dict", {}).get("combined_loader"))
    progress = loops.get("epoch_loop.batch_progress")
    if position is None or not progress:
        return
    per_epoch = shard_length // batch_size
    consumed = per_epoch if shard_length - position < batch_size else position // batch_size
    delta = consumed - int(progress["current"]["ready"])
    for scope in ("current", "total"):
        for key, value in progress[scope].items():
            progress[scope][key] = max(0, int(value) + delta)
