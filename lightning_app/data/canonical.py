"""The run's canonical data-parallel layout: which samples each optimizer step takes, whatever the devices.

A run fixes at its start its **canonical data-parallel width** C (``--data.canonical_ranks``, default 2) and keeps
it for life: it is saved in every checkpoint (``checkpoint["data_parallel"]``) and a resume takes it from there.
Each epoch's permutation (a pure function of seed and epoch) is cut into C canonical shards, ``perm[c::C]``, and
batch i of an epoch (a *round*) is, on every number of devices, the C canonical micro-batches
``shard_c[k + i*b : k + (i+1)*b]`` (b = ``--data.batch_size``; k = where the epoch was resumed, 0 otherwise), in
canonical order. The global batch of an optimizer step is ``C x b x accumulate_grad_batches`` samples.

W processes (devices) split each round's ``C x b`` samples into W contiguous slices:

- **W divides C**: process p runs the m = C / W canonical micro-batches ``p*m .. p*m + m - 1`` one after the other,
  each drawing its dropout from its canonical rank's own random stream and weighted 1/m, so that DDP's mean over
  the W processes is the mean over the C canonical ranks. That is DDP's own arithmetic for C ranks: DDP multiplies
  each rank's gradient by 1/C and sums. For C = 2 the sum is one addition, which is commutative, and scaling by a
  power of two is exact: one device running 2 canonical micro-batches ends bit for bit where 2 devices end (the
  module keeps each canonical rank's accumulated gradient apart when ``accumulate_grad_batches > 1``, as DDP
  does). For C > 2 on fewer than C devices the collective's summation order cannot be reproduced: the samples
  and the random streams are the same, the last bits are not.
- **W does not divide C** (only on resume: 3 devices for a run of 2): the slices are near-equal, each weighted by
  its share of the round; the same samples make each step, re-split, but the numbers are not bit-exact.

Nothing here imports Lightning: the data module resolves the layout, the LightningModule runs it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_app.errors import ConfigError, bad_value

log = logging.getLogger("lightning_app")

#: Where a checkpoint keeps the layout it was saved with (plain ints and a string: loads with weights_only=True).
CHECKPOINT_KEY = "data_parallel"
#: `KaggleModelCheckpoint.state_key`: an older checkpoint's settings are read from that callback's state.
_CHECKPOINT_CALLBACK_KEY = "KaggleModelCheckpoint"


@dataclass(frozen=True)
class MicroBatch:
    """One forward and backward of a process's batch: rows ``[start, stop)``, drawing from random stream ``stream``.

    Args:
        stream: the random stream its dropout draws from: its canonical rank (ids >= C only where the devices do
            not divide C and a process has no canonical rank of its own).
        start: first row of the process's batch.
        stop: one past its last row.
        weight: what its mean loss is multiplied by (1/m for m canonical micro-batches per process).
    """

    stream: int
    start: int
    stop: int
    weight: float


@dataclass(frozen=True)
class Layout:
    """How one process of ``world_size`` takes part in each round of a run of ``canonical_ranks``.

    Example::

        layout = Layout(canonical_ranks=2, micro_batch_size=8)  # one device, a run of 2 canonical ranks
        layout.process_batch_size  # 16: both canonical micro-batches of each round
        [(m.stream, m.start, m.stop, m.weight) for m in layout.micro_batches()]  # [(0, 0, 8, 0.5), (1, 8, 16, 0.5)]

    Args:
        canonical_ranks: C, fixed at the run's start.
        micro_batch_size: b, samples per canonical micro-batch (``--data.batch_size``).
        world_size: W, processes (devices) sharing the data now.
        rank: this process's global rank.
        accumulate_grad_batches: rounds per optimizer step.
    """

    canonical_ranks: int
    micro_batch_size: int
    world_size: int = 1
    rank: int = 0
    accumulate_grad_batches: int = 1

    @property
    def round_size(self) -> int:
        """Samples in one round (one batch index): the C canonical micro-batches."""
        return self.canonical_ranks * self.micro_batch_size

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step: C x b x accumulate_grad_batches."""
        return self.round_size * self.accumulate_grad_batches

    @property
    def divides(self) -> bool:
        """Whether every process runs whole canonical micro-batches (W divides C)."""
        return self.canonical_ranks % self.world_size == 0

    @property
    def exact(self) -> bool:
        """Whether the run's numbers are bit for bit those of C devices (on CPU; on GPU with deterministic kernels)."""
        return self.divides and (self.world_size == self.canonical_ranks or self.canonical_ranks <= 2)

    def process_slice(self, rank: int | None = None) -> tuple[int, int]:
        """``[start, stop)`` of process ``rank`` (default: this one) within a round's C x b samples."""
        rank = self.rank if rank is None else rank
        return rank * self.round_size // self.world_size, (rank + 1) * self.round_size // self.world_size

    @property
    def process_batch_size(self) -> int:
        """Rows of this process's batch in every round."""
        start, stop = self.process_slice()
        return stop - start

    def micro_batches(self) -> list[MicroBatch]:
        """This process's micro-batches of a round, in the order it runs them."""
        b, world = self.micro_batch_size, self.world_size
        if self.divides:
            per_process = self.canonical_ranks // world
            weight = 1.0 / per_process  # exact: C and W are what they are, and 1/m is a power of two for m = 2
            return [MicroBatch(self.rank * per_process + j, j * b, (j + 1) * b, weight) for j in range(per_process)]
        rows = self.process_batch_size
        pieces = max(1, math.ceil(rows / b))  # no forward larger than a canonical micro-batch
        bounds = [i * rows // pieces for i in range(pieces + 1)]
        return [
            MicroBatch(self.rank, start, stop, (stop - start) * world / self.round_size)
            for start, stop in zip(bounds, bounds[1:], strict=False)
        ]

    def describe(self) -> str:
        """``global batch 16 (2 canonical ranks x 8 x 1 accumulated) on 1 device``: what the start line says."""
        devices = f"{self.world_size} device{'s' if self.world_size != 1 else ''}"
        return (
            f"global batch {self.global_batch_size} ({self.canonical_ranks} canonical ranks x {self.micro_batch_size}"
            f" x {self.accumulate_grad_batches} accumulated) on {devices}"
        )

    def to_checkpoint(self, precision: str | None) -> dict[str, Any]:
        """What a checkpoint keeps under `CHECKPOINT_KEY`: plain values, loadable with ``weights_only=True``."""
        return {
            "canonical_ranks": self.canonical_ranks,
            "micro_batch_size": self.micro_batch_size,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "global_batch_size": self.global_batch_size,
            "world_size": self.world_size,
            "precision": precision,
        }


@dataclass(frozen=True)
class SavedLayout:
    """The layout a checkpoint was saved with; fields an older checkpoint does not tell are None.

    Args:
        canonical_ranks: the run's C (an older checkpoint's: its number of ranks).
        world_size: the devices that saved it.
        micro_batch_size: b, if known.
        accumulate_grad_batches: rounds per step, if known.
        precision: the precision the run trained in (``16-mixed``...), if known.
    """

    canonical_ranks: int
    world_size: int
    micro_batch_size: int | None = None
    accumulate_grad_batches: int | None = None
    precision: str | None = None

    @property
    def global_batch_size(self) -> int | None:
        if self.micro_batch_size is None or self.accumulate_grad_batches is None:
            return None
        return self.canonical_ranks * self.micro_batch_size * self.accumulate_grad_batches


def saved_layout(checkpoint: Mapping[str, Any]) -> SavedLayout:
    """The layout of a loaded checkpoint; one saved before layouts were kept is read as C = its number of ranks."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(saved, Mapping):
        return SavedLayout(
            canonical_ranks=int(saved["canonical_ranks"]),
            world_size=int(saved.get("world_size", saved["canonical_ranks"])),
            micro_batch_size=_int_or_none(saved.get("micro_batch_size")),
            accumulate_grad_batches=_int_or_none(saved.get("accumulate_grad_batches")),
            precision=saved.get("precision"),
        )
    training = checkpoint.get("callbacks", {}).get(_CHECKPOINT_CALLBACK_KEY, {}).get("training", {})
    rng = checkpoint.get("rng_states") or {}
    ranks = rng.get("world_size") or len(rng.get("per_rank", {})) or training.get("trainer.world_size") or 1
    return SavedLayout(
        canonical_ranks=int(ranks),
        world_size=int(ranks),
        micro_batch_size=_old_micro_batch_size(checkpoint),
        accumulate_grad_batches=_int_or_none(training.get("trainer.accumulate_grad_batches")),
        precision=training.get("trainer.precision"),
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _old_micro_batch_size(checkpoint: Mapping[str, Any]) -> int | None:
    """An older checkpoint's per-rank batch, from its loader state: samples handed out / batches handed out."""
    try:
        state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
        main = state["_snapshot"]["_main_snapshot"] if "_snapshot" in state else state  # with workers / without
        samples = int(main["_sampler_iter_state"]["samples_yielded"])
        batches = int(main["_sampler_iter_yielded"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return samples // batches if batches > 0 and samples % batches == 0 else None


def read_saved_layout(path: str | Path) -> SavedLayout:
    """The layout (and precision) of the checkpoint at ``path``, read before the Trainer is built.

    Loaded with ``weights_only=True`` and ``mmap=True``: the tensors are mapped, not read.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return saved_layout(checkpoint)


def fresh_layout(requested: int, micro_batch_size: int, world_size: int, rank: int, accumulate: int) -> Layout:
    """The layout of a run that starts now: C = ``requested``, or the number of devices when there are more.

    Raises:
        ConfigError: ``requested`` is above the number of devices and not a multiple of it.
    """
    if world_size > requested:
        requested = world_size
    elif requested % world_size:
        raise bad_value(
            "--data.canonical_ranks",
            requested,
            f"a multiple of the {world_size} devices (e.g. {world_size * math.ceil(requested / world_size)}), "
            f"or at most {world_size}",
        )
    return Layout(requested, micro_batch_size, world_size, rank, accumulate)


def resumed_layout(
    saved: SavedLayout, micro_batch_size: int, world_size: int, rank: int, accumulate: int
) -> tuple[Layout, str | None]:
    """The layout of a resumed run (C is the checkpoint's) and the one line to log about it, or None.

    Raises:
        ConfigError: more devices than samples in a round (a device would have nothing to train on).
    """
    layout = Layout(saved.canonical_ranks, micro_batch_size, world_size, rank, accumulate)
    if world_size > layout.round_size:
        raise ConfigError(
            f"--trainer.devices: got {world_size} devices; expected at most {layout.round_size}, the samples of one "
            f"batch of this run ({layout.canonical_ranks} canonical ranks x --data.batch_size {micro_batch_size})"
        )
    parts = []
    if world_size != saved.world_size:
        parts.append(_layout_change(layout))
    if saved.global_batch_size is not None and saved.global_batch_size != layout.global_batch_size:
        parts.append(_batch_change(saved, layout))
    return layout, "; ".join(parts) or None


def _layout_change(layout: Layout) -> str:
    c, w = layout.canonical_ranks, layout.world_size
    head = f"Resuming the run's {c} canonical rank{'s' if c != 1 else ''} on {w} device{'s' if w != 1 else ''}"
    if not layout.divides:
        return (
            f"{head}: the same {layout.global_batch_size} samples per step, re-split over the devices; "
            "not bit-exact (dropout streams and gradient sums differ)"
        )
    share = f" ({c // w} canonical micro-batches each)" if c > w else ""
    if layout.exact:
        return f"{head}{share}: bit for bit as on {c} device{'s' if c != 1 else ''}"
    return (
        f"{head}{share}: the same samples and random streams per step; not bit-exact (the gradients of "
        f"{c} canonical ranks are summed in another order)"
    )


def _batch_change(saved: SavedLayout, layout: Layout) -> str:
    line = f"Global batch {saved.global_batch_size} -> {layout.global_batch_size}"
    if saved.micro_batch_size != layout.micro_batch_size:
        line += f" (--data.batch_size {saved.micro_batch_size} -> {layout.micro_batch_size})"
    if saved.accumulate_grad_batches != layout.accumulate_grad_batches:
        line += (
            f" (--trainer.accumulate_grad_batches {saved.accumulate_grad_batches} -> {layout.accumulate_grad_batches})"
        )
    return (
        f"{line}: the sample order is kept; the steps, the schedule's length and the numbers are no longer the "
        f"saved run's (--data.batch_size {saved.micro_batch_size} and --trainer.accumulate_grad_batches "
        f"{saved.accumulate_grad_batches} keep them)"
    )


def precision_on_resume(resume: str | None, auto: str) -> str:
    """The precision of a ``fit`` whose ``--trainer.precision`` was left to auto: the run's own on resume.

    A ``16-mixed`` run begun on T4s stays ``16-mixed`` on an L4 (where auto would choose ``bf16-mixed``), and one
    line says so. Where this machine cannot run the saved precision (a GPU run resumed on CPU, a ``bf16-mixed`` run
    on a GPU without bf16), ``auto`` stays, with one line.

    Args:
        resume: ``--resume``: a checkpoint file is read here; None or ``auto`` (resolved later, once the store
            exists) give ``auto``.
        auto: what ``auto`` resolves to on this machine (`lightning_app.precision.resolve_precision`).
    """
    if not resume or resume == "auto" or not Path(resume).is_file():
        return auto
    try:
        saved = read_saved_layout(resume).precision
    except Exception:  # noqa: BLE001 - a file that does not load is refused, in one line, by --resume itself
        return auto
    if saved is None or saved == auto:
        return auto
    first = _is_first_process()
    if auto == "32-true" or (saved == "bf16-mixed" and auto == "16-mixed"):
        if first:
            log.info(f"Precision {auto}: the run trained in {saved}, which this machine cannot run")
        return auto
    if first:
        log.info(f"Precision {saved}: the run's own, kept on resume (auto would choose {auto} here)")
    return saved


def _is_first_process() -> bool:
    """Rank 0 before the Trainer exists: Lightning's DDP launcher starts the other ranks with LOCAL_RANK set."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
