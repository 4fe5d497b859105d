"""The baseline of `benchmarks.throughput`: a plain PyTorch training loop, and the settings both arms share.

The same ``TransformerLM``, synthetic data, batch, precision and optimizer as ``fit`` (fused AdamW with the
module's two parameter groups and warmup-cosine schedule, the module's defaults), and nothing else.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.common import autocast_dtype, synchronize
from lightning_app.data import SyntheticDataModule
from lightning_app.model import TransformerConfig, TransformerLM
from lightning_app.module import LanguageModel
from lightning_app.schedule import WarmupCosine

VOCAB_SIZE = 256
PE_TYPE = "sinusoidal"
DROPOUT = 0.1
SEED = 1234


@dataclass(frozen=True)
class Setting:
    """One model size and the batch it trains with.

    Args:
        size: ``--model.model_size``.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        warmup: steps left out of the timing.
        steps: timed steps.
        every_n_steps: the step-checkpoint (and publish) interval of the "fit + saves" arm.
        compile: run the model through ``torch.compile`` in both arms.
        threads: torch CPU threads for every arm (None: leave torch's setting alone).
        overrides: ``(field, value)`` pairs that override the size preset (``d_model``, ``n_layers``...).
    """

    size: str
    batch_size: int
    seq_len: int
    warmup: int
    steps: int
    every_n_steps: int | None
    compile: bool = False
    threads: int | None = None
    overrides: tuple[tuple[str, int], ...] = ()

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def saves_timed(self) -> int:
        """Step checkpoints the fit arm writes inside the timed steps."""
        if not self.every_n_steps:
            return 0
        first, last = self.warmup, self.warmup + self.steps  # saves run after the timer's hook at the same step
        return sum(1 for step in range(first, last) if step > 0 and step % self.every_n_steps == 0)


def data_config(setting: Setting) -> dict:
    """``--data.*`` of both arms: enough sequences for the timed steps, no epoch end in view."""
    return {
        "vocab_size": VOCAB_SIZE,
        "seq_len": setting.seq_len,
        "batch_size": setting.batch_size,
        "canonical_ranks": 1,  # one forward of the whole batch per step, as the plain loop (benchmarks.micro_batches)
        "num_train_sequences": setting.batch_size * (setting.warmup + setting.steps + 1),  # no epoch end in view
        "num_val_sequences": setting.batch_size,
    }


def plain_loop(setting: Setting, device: str, precision: str) -> float:
    """Seconds for the timed steps of a plain PyTorch training loop."""
    torch.manual_seed(SEED)
    dataset = SyntheticDataModule(**data_config(setting)).train_dataset
    config = TransformerConfig.from_preset(
        setting.size, pe_type=PE_TYPE, vocab_size=VOCAB_SIZE, dropout=DROPOUT, **dict(setting.overrides)
    )
    model = TransformerLM(config).to(device).train()
    forward = torch.compile(model) if setting.compile else model
    hp = {name: p.default for name, p in inspect.signature(LanguageModel).parameters.items()}  # fit's defaults
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=(0.9, hp["beta2"]), fused=True)
    total = setting.warmup + setting.steps
    schedule = WarmupCosine(hp["warmup_steps"], total, hp["min_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(
        dataset, batch_size=setting.batch_size, shuffle=True, drop_last=True, pin_memory=device == "cuda",
        generator=generator,
    )  # fmt: skip
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    start = None
    for step, (inputs, targets) in enumerate(loader, start=1):
        inputs = inputs.to(device, non_blocking=True)  # (B, T)
        targets = targets.to(device, non_blocking=True)  # (B, T)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = forward(inputs)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step == setting.warmup:
            synchronize(device)
            start = time.perf_counter()
        elif step == total:
            synchronize(device)
            return time.perf_counter() - start
    raise RuntimeError("the loader ran out before the timed steps were done")
