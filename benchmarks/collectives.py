"""Collectives: what deciding time-based saves and the deadline costs per step under 2-process CPU DDP (gloo).

Two ranks train a near-zero-compute ``LanguageModel`` (1 layer, d_model 16, 2x8 tokens per rank, one thread each),
so that what a step costs besides its own gradient all-reduce shows. Three arms alternate, each a real ``Trainer``
(``strategy="ddp"``, the process group kept between runs) with the project's ``KaggleModelCheckpoint`` and
``SessionDeadline``:

- **no per-step checks**: nothing for them to decide (no ``train_time_interval``, no budget, signals not
  handled), so no collective at all.
- **old**: the same plus what the two callbacks did at every step before `StepConsensus`, emulated: the
  checkpoint callback's ``strategy.broadcast(save_due)`` and the deadline's
  ``strategy.reduce_boolean_decision(stop, all=False)``.
- **new**: the callbacks deciding time-based saves (``train_time_interval`` 10 h), the deadline (a 10 h budget)
  and signals, through their one shared `StepConsensus`: one all-reduce every K steps.

Each rank reads the clock at the end of step ``warmup`` and of step ``warmup + steps``; rank 0's timings are
reported (the gradient all-reduce keeps the ranks in step). The parent process starts both ranks itself (as
``torchrun`` would), so every arm runs in the same two processes.

Usage::

    python -m benchmarks.collectives            # about 90 s on 2 cores
    python -m benchmarks.collectives --quick    # seconds: checks that it runs
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from benchmarks.common import command_line, make_parser, markdown_table, median, parse, print_report, quiet, spread
from callbacks.checkpoint import KaggleModelCheckpoint
from callbacks.deadline import SessionDeadline
from lightning_app.data import SyntheticDataModule
from lightning_app.module import LanguageModel

ARMS = ("none", "old", "new")
LABELS = {
    "none": "no per-step checks",
    "old": "old: broadcast + all-reduce every step",
    "new": "new: StepConsensus, one all-reduce every K steps",
}
WORLD = 2


class OldPerStepCollectives(Callback):
    """The collectives the two callbacks ran at every step before `StepConsensus` (emulated)."""

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        trainer.strategy.broadcast(False)  # KaggleModelCheckpoint: is a time-based save due?
        trainer.strategy.reduce_boolean_decision(False, all=False)  # SessionDeadline: stop on any rank?


class StepClock(Callback):
    """The wall clock at the end of step ``warmup`` and of step ``warmup + steps``; collectives in between."""

    def __init__(self, warmup: int, steps: int, consensus=None) -> None:
        self.warmup, self.steps, self.consensus = warmup, steps, consensus
        self.marks: list[tuple[float, int]] = []

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (self.warmup, self.warmup + self.steps):
            self.marks.append((time.perf_counter(), self.consensus.collectives if self.consensus else 0))


def run_arm(arm: str, warmup: int, steps: int, folder: Path) -> dict[str, float]:
    """One ``Trainer.fit`` of ``arm`` on this rank; ms per step and collectives per 100 steps."""
    decide = arm == "new"
    checkpoint = KaggleModelCheckpoint(
        dirpath=str(folder), train_time_interval="10:00:00" if decide else None, every_n_epochs=1000, verbose=False
    )
    deadline = SessionDeadline(budget="10:00:00" if decide else "off", handle_signals=decide)
    callbacks: list[Callback] = [checkpoint, deadline, *([OldPerStepCollectives()] if arm == "old" else [])]
    consensus = checkpoint.consensus
    clock = StepClock(warmup, steps, consensus)
    model = LanguageModel(
        pe_type="sinusoidal", model_size="tiny", vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0
    )
    batch = 2
    data = SyntheticDataModule(
        vocab_size=32, seq_len=8, batch_size=batch, num_train_sequences=batch * WORLD * (warmup + steps + 10)
    )
    with quiet():
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=WORLD,
            strategy="ddp",
            max_steps=warmup + steps,
            callbacks=[clock, *callbacks],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=str(folder),
            use_distributed_sampler=False,
        )
        trainer.fit(model, datamodule=data)
    (start, before), (end, after) = clock.marks
    every = consensus.every
    return {"ms": 1000 * (end - start) / steps, "collectives": 100 * (after - before) / steps, "every": every}


def worker(result: Path, warmup: int, steps: int, repeats: int, folder: Path) -> None:
    """One rank: every arm ``repeats`` times, alternated; rank 0 writes what it measured to ``result``."""
    torch.set_num_threads(1)
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for repeat in range(repeats):
        order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
        for arm in order:
            runs[arm].append(run_arm(arm, warmup, steps, folder / f"{arm}-{repeat}"))
    if os.environ["LOCAL_RANK"] == "0":
        result.write_text(json.dumps(runs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(warmup: int, steps: int, repeats: int, tmp: Path) -> dict[str, list[dict[str, float]]]:
    """Start both ranks (``LOCAL_RANK`` set: Lightning then launches nothing itself) and wait for them."""
    result = tmp / "result.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD)}
    env.update(OMP_NUM_THREADS="1", NODE_RANK="0", PYTHONWARNINGS="ignore")
    args = [sys.executable, "-m", "benchmarks.collectives", "--worker", str(result), "--warmup", str(warmup)]
    args += ["--steps", str(steps), "--repeats", str(repeats), "--folder", str(tmp)]
    ranks = [subprocess.Popen(args, env={**env, "LOCAL_RANK": str(rank)}) for rank in range(WORLD)]
    try:
        codes = [rank.wait(timeout=600) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    if any(codes):
        raise SystemExit(f"benchmarks.collectives: a rank failed (exit codes {codes})")
    return json.loads(result.read_text())


def _rows(runs: dict[str, list[dict[str, float]]]) -> list[list[object]]:
    baseline = [run["ms"] for run in runs["none"]]
    rows = []
    for arm in ARMS:
        ms = [run["ms"] for run in runs[arm]]
        ratios = [a / b for a, b in zip(ms, baseline)]  # the alternated pairs
        extra = median(ms) - median(baseline)
        every = max(run["every"] for run in runs[arm])
        rows.append(
            [
                LABELS[arm],
                f"{median(ms):.2f}",
                spread(ms),
                f"{median(ratios):.3f}x",
                "-" if arm == "none" else f"{extra:+.2f}",
                f"{median([run['collectives'] for run in runs[arm]]):.1f}" if arm == "new" else "-",
                every if arm == "new" else ("1" if arm == "old" else "-"),
            ]
        )
    runs_old = [run["ms"] for run in runs["old"]]
    runs_new = [run["ms"] for run in runs["new"]]
    rows.append(["new / old", "-", "-", f"{median([n / o for n, o in zip(runs_new, runs_old)]):.3f}x", "-", "-", "-"])
    return rows


HEADERS = (
    "arm",
    "ms / step (median)",
    "range",
    "vs no checks",
    "ms / step added",
    "consensus all-reduces / 100 steps",
    "K",
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, help="timed steps per run (default 300; 20 with --quick)")
    parser.add_argument("--warmup", type=int, help="steps before the clock starts (default 20; 5 with --quick)")
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 5; 1 with --quick)")
    parser.add_argument("--worker", type=Path, help="(internal) run as one rank, writing results here")
    parser.add_argument("--folder", type=Path, help="(internal) the ranks' shared scratch folder")
    args = parse(parser, argv)
    steps = args.steps or (20 if args.quick else 300)
    warmup = args.warmup or (5 if args.quick else 20)
    repeats = args.repeats or (1 if args.quick else 5)
    if args.worker is not None:
        worker(args.worker, warmup, steps, repeats, args.folder)
        return
    with tempfile.TemporaryDirectory(prefix="bench-collectives-") as tmp:
        runs = launch(warmup, steps, repeats, Path(tmp))
    torch.set_num_threads(1)  # what each rank used, for the machine line
    notes = [
        f"2 ranks on CPU (gloo), one thread each; a 1-layer d_model-16 model on 2x8 tokens per rank, so that the "
        f"step is mostly framework and DDP overhead. {steps} timed steps after {warmup} of warm-up, {repeats} "
        "alternated runs per arm: medians, ratios of the alternated pairs. K is the new arm's last interval between "
        "checks (2 s of steps). The old arm's two calls per step are four collectives on the wire: "
        "`broadcast_object_list` (size, then the pickled bool) and `reduce_boolean_decision` (a barrier, then an "
        "all-reduce)."
    ]
    command = command_line("benchmarks.collectives", argv)
    print_report("Collectives", "cpu", command, markdown_table(HEADERS, _rows(runs)), notes)


if __name__ == "__main__":
    main()
