"""Checkpoint stall: how long the training loop is blocked per checkpoint, project versus stock Lightning.

Three arms train the same ``LanguageModel`` (``base`` by default: fp32 weights and AdamW's two moments, a
checkpoint of about 1 GB) with a real ``Trainer``:

- **host copy**: the bare cost. The model's ``state_dict`` and the optimizer state are copied into host buffers
  allocated once (pinned on GPU); nothing is written.
- **project**: ``KaggleModelCheckpoint``. The loop waits for the copy into reused host buffers; a background
  thread serialises, hashes, writes and updates the manifest. A save (``save_at_step_boundary``) is made once the
  previous write is done, as with saves every epoch or every 30 minutes; training goes on meanwhile.
- **stock**: Lightning's ``ModelCheckpoint(every_n_train_steps=...)``: ``torch.save`` inline.

Blocked time is the wall time the training thread spends in the hook that saves (``on_train_batch_end``) at a
saving step, where both callbacks save (after ``torch.cuda.synchronize`` on GPU). Each run's first save is left
out of the median and shown on its own (it allocates the buffers). The arms alternate ``--repeats`` times.

Usage::

    python -m benchmarks.checkpoint_stall                  # base (~1 GB checkpoint)
    python -m benchmarks.checkpoint_stall --size small     # ~230 MB
    python -m benchmarks.checkpoint_stall --quick          # tiny, seconds: checks that it runs
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from benchmarks.common import (
    command_line,
    make_parser,
    markdown_table,
    median,
    parse,
    precision_for,
    print_report,
    quiet,
    spread,
    synchronize,
)
from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel

ARMS = ("host copy", "project", "stock")


@dataclass
class Saves:
    """What one arm measured, over all its runs."""

    blocked: list[float] = field(default_factory=list)  # seconds per save, first saves of runs left out
    first: list[float] = field(default_factory=list)  # the first save of each run
    extra_gpu: list[int] = field(default_factory=list)  # bytes of GPU memory above what was allocated before
    background: list[float] = field(default_factory=list)  # project: seconds from submit to file + manifest done
    last_return: float = 0.0  # clock when the last save returned to the loop
    steps: list[float] = field(default_factory=list)  # seconds from one step's end to the next's, no save between
    after_save: list[float] = field(default_factory=list)  # the same across a timed save (its hook + next step)

    @property
    def lost(self) -> float:
        """Training time one save costs, overlap included: the step after it minus a step without a save."""
        return median(self.after_save) - median(self.steps)

    def written(self, saved: SavedCheckpoint) -> None:
        """A `KaggleModelCheckpoint` listener: the background write of the last save is done."""
        self.background.append(time.perf_counter() - self.last_return)


class StallTimer:
    """Times ``target.on_train_batch_end`` (wrapped on the instance): the hook at saving steps, and every step's
    end to the next one's (after a GPU sync), so that a save's cost overlapped with the next step shows too.
    Stops one step after ``saves`` saves.

    Args:
        target: the callback that saves.
        is_saving: ``(trainer) -> bool``, asked before the hook runs: does this step save?
        saves: saves to time, the first one included.
        device: ``cuda`` to synchronise and watch GPU memory.
        record: where the times go.
        overlap: do not synchronise after the saving hook (the project's GPU copy runs on a side stream during the
            next step); its "blocked" time is then the CPU's only, and ``Saves.lost`` the whole cost.
    """

    def __init__(
        self, target: Callback, is_saving: Callable, saves: int, device: str, record: Saves, overlap: bool = False
    ) -> None:
        self.saves, self.device, self.record, self.count, self.overlap = saves, device, record, 0, overlap
        self._is_saving, self._hook = is_saving, target.on_train_batch_end
        self._step_end: float | None = None
        self._after_save: str | None = None  # "first" or "timed" at the step after a save
        target.on_train_batch_end = self._timed  # Lightning looks hooks up on the instance

    def _timed(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        if self._step_end is not None:
            interval = start - self._step_end
            if self._after_save == "timed":
                self.record.after_save.append(interval)
            elif self._after_save is None and self.count > 0:  # once the buffers exist, as for the saves compared
                self.record.steps.append(interval)
        self._step_end, self._after_save = start, None
        if self.count >= self.saves:
            trainer.should_stop = True
        if not self._is_saving(trainer) or self.count >= self.saves:
            self._hook(trainer, *args, **kwargs)
            return
        cuda = self.device == "cuda"
        before = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self._hook(trainer, *args, **kwargs)
        if not self.overlap:
            synchronize(self.device)
        self.record.last_return = time.perf_counter()
        seconds = self.record.last_return - start
        (self.record.first if self.count == 0 else self.record.blocked).append(seconds)
        self._after_save = "first" if self.count == 0 else "timed"
        self.record.extra_gpu.append(torch.cuda.max_memory_allocated() - before if cuda else 0)
        self.count += 1


class HostCopy(Callback):
    """The bare cost: copy weights and optimizer state into host buffers allocated on the first call."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._buffers: list[torch.Tensor] | None = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every:
            return
        tensors = _unique_tensors(pl_module, trainer.optimizers)
        if self._buffers is None:
            self._buffers = [torch.empty_like(t, device="cpu", pin_memory=t.is_cuda) for t in tensors]
        for buffer, tensor in zip(self._buffers, tensors, strict=True):
            buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)


def _unique_tensors(module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    tensors = list(module.state_dict().values())
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    seen, unique = set(), []
    for tensor in tensors:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if key not in seen:  # tied weights: one copy, as the checkpoint holds them once
            seen.add(key)
            unique.append(tensor)
    return unique


class SaveWhenIdle(Callback):
    """Saves through ``checkpoint`` once ``gap`` steps passed and its previous background write is done."""

    def __init__(self, checkpoint: KaggleModelCheckpoint, gap: int) -> None:
        self.checkpoint, self.gap, self.last = checkpoint, gap, 0
        self._decided: tuple[int, bool] = (-1, False)

    def due(self, trainer: pl.Trainer) -> bool:
        """Does this step save? Decided once per step (the background write may end in between)."""
        step, due = self._decided
        if step != trainer.global_step:
            idle = self.checkpoint.wait_for_writes(timeout=0)
            due = idle and trainer.global_step - self.last >= self.gap
            self._decided = (trainer.global_step, due)
        return due

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if self.due(trainer):
            self.checkpoint.save_at_step_boundary(trainer)
            self.last = trainer.global_step


def run_arm(arm: str, size: str, device: str, saves: int, gap: int, workdir: Path, record: Saves) -> int:
    """Train until ``saves`` saves are timed; returns the size in bytes of one checkpoint (0 for host copy)."""
    shutil.rmtree(workdir, ignore_errors=True)

    def every_gap(trainer: pl.Trainer) -> bool:
        return trainer.global_step % gap == 0

    if arm == "host copy":
        target = HostCopy(gap)
        callbacks: list[Callback] = [target]
        StallTimer(target, every_gap, saves, device, record)
    elif arm == "stock":
        target = ModelCheckpoint(dirpath=workdir, every_n_train_steps=gap)
        callbacks = [target]
        StallTimer(target, every_gap, saves, device, record)
    else:
        target = KaggleModelCheckpoint(dirpath=str(workdir), verbose=False)
        trigger = SaveWhenIdle(target, gap)
        target.add_listener(record.written)
        callbacks = [target, trigger]
        StallTimer(trigger, trigger.due, saves, device, record, overlap=True)  # saves inside the trigger's hook
    model = LanguageModel(pe_type="sinusoidal", model_size=size, vocab_size=256, dropout=0.0)
    batch = 2
    data = SyntheticDataModule(vocab_size=256, seq_len=16, batch_size=batch, num_train_sequences=batch * 10_000)
    try:
        with quiet():
            trainer = pl.Trainer(
                accelerator="gpu" if device == "cuda" else "cpu",
                devices=1,
                precision=precision_for(device),
                max_steps=10_000,
                callbacks=callbacks,
                enable_checkpointing=arm != "host copy",
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                default_root_dir=workdir,
                use_distributed_sampler=False,
            )
            trainer.fit(model, datamodule=data)
        if arm == "project":
            target.wait_for_writes()
        files = sorted(workdir.glob("*.ckpt"))
        return files[-1].stat().st_size if files else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _row(arm: str, saves: Saves, baseline: float, device: str) -> list[object]:
    blocked = median(saves.blocked)
    gpu = f"{max(saves.extra_gpu) / 2**20:.0f} MiB" if device == "cuda" and saves.extra_gpu else "n/a (CPU)"
    return [
        {"host copy": "host copy (bare)", "project": "project: KaggleModelCheckpoint"}.get(
            arm, "stock: ModelCheckpoint"
        ),
        f"{blocked:.3f}",
        spread(saves.blocked, 3),
        f"{median(saves.first):.3f}",
        f"{blocked / baseline:.2f}x",
        f"{median(saves.background):.2f}" if saves.background else "-",
        f"{saves.lost:.3f}" if saves.after_save and saves.steps else "-",
        gpu,
    ]


HEADERS = ("arm", "blocked s / save (median)", "range", "first save s", "vs host copy", "background write s")
HEADERS += ("lost s / save (overlap included)", "extra GPU memory")


def main(argv: Sequence[str] | None = None) -> dict[str, Saves]:
    """Print the report; returns what each arm measured (unrounded)."""
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--size", help="model size (default: base; tiny with --quick)")
    parser.add_argument("--saves", type=int, help="timed saves per run after the first (default 3; 1 with --quick)")
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 2; 1 with --quick)")
    parser.add_argument("--gap", type=int, default=2, help="training steps between saves (at least)")
    args = parse(parser, argv)
    size = args.size or ("tiny" if args.quick else "base")
    saves = 1 + (args.saves or (1 if args.quick else 3))
    repeats = args.repeats or (1 if args.quick else 2)
    records = {arm: Saves() for arm in ARMS}
    sizes = []
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        for repeat in range(repeats):
            order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
            for arm in order:
                workdir = Path(tmp) / f"{arm.replace(' ', '-')}-{repeat}"
                sizes.append(run_arm(arm, size, args.device, saves, args.gap, workdir, records[arm]))
    baseline = median(records["host copy"].blocked)
    rows = [_row(arm, records[arm], baseline, args.device) for arm in ARMS]
    megabytes = max(sizes) / 1e6
    notes = [
        f"Model `{size}`, precision {precision_for(args.device)}, checkpoint {megabytes:,.0f} MB. Medians over "
        f"{repeats} alternated runs x {saves - 1} saves per arm (the first save of each run shown apart). "
        "Goal: project <= 1.5x host copy, with no extra GPU memory. lost s / save = the step after a save (its hook "
        "and the next step, up to a GPU sync) minus the median step without one: on a GPU the project's copy runs "
        "on a side stream during the next step, and its blocked time is the CPU's only."
    ]
    command = command_line("benchmarks.checkpoint_stall", argv)
    print_report("Checkpoint stall", args.device, command, markdown_table(HEADERS, rows), notes)
    return records


if __name__ == "__main__":
    main()
