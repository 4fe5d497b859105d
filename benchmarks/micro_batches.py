"""Canonical micro-batches: tokens/s of one device running 2 canonical micro-batches per step, versus one forward.

A run keeps 2 canonical ranks on one device (``--data.canonical_ranks 2``, the default) so that it can later
continue on two devices bit for bit: each step then runs two forwards and backwards of half the batch, each with
its canonical rank's random stream swapped in, and the first backward inside the training step
(`lightning_app.module.LanguageModel.training_step`). Both arms are ``python -m lightning_app fit`` (the CLI
in-process, all the project's callbacks, no checkpoint inside the timed steps) on the same model, data, global
batch, precision and device; only the split differs:

- **one forward**: ``--data.canonical_ranks 1 --data.batch_size B``: the whole global batch in one forward;
- **2 micro-batches**: ``--data.canonical_ranks 2 --data.batch_size B/2``: what a one-device run does by default.

Each arm reads the clock at the end of step ``warmup`` and of step ``warmup + steps`` (after a GPU sync); the
arms alternate ``--repeats`` times and the ratio is the median of the ratios of each alternated pair.

Usage::

    python -m benchmarks.micro_batches                 # tiny and small on CPU; small and base on a GPU
    python -m benchmarks.micro_batches --quick         # seconds: checks that it runs
    python -m benchmarks.micro_batches --sizes small --batch 32 --steps 10   # the default config's global batch
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import (
    command_line,
    make_parser,
    markdown_table,
    median,
    parse,
    precision_for,
    print_report,
    quiet,
    run_fit,
    spread,
    working_directory,
    write_config,
)
from benchmarks.plain_loop import Setting
from benchmarks.throughput import SETTINGS, StepTimer, fit_config

ARMS = {"one forward": 1, "2 micro-batches": 2}  # arm -> --data.canonical_ranks
HEADERS = (
    "model",
    "torch threads",
    "precision",
    "global batch x seq",
    "timed steps (+warm-up)",
    "one forward tok/s",
    "2 micro-batches tok/s",
    "2 micro-batches / one forward (range)",
)


def arm_seconds(setting: Setting, canonical_ranks: int, device: str, precision: str, workdir: Path) -> float:
    """Seconds for the timed steps of ``fit`` with the global batch split into ``canonical_ranks`` micro-batches."""
    config = fit_config(setting, device, precision)
    config["data"]["init_args"].update(
        canonical_ranks=canonical_ranks, batch_size=setting.batch_size // canonical_ranks
    )
    shutil.rmtree(workdir, ignore_errors=True)
    timer = StepTimer(setting.warmup, setting.steps, device)
    try:
        with working_directory(_made(workdir)), quiet():
            run_fit(write_config(workdir / "fit.yaml", config), callbacks=[timer])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if timer.seconds is None:
        raise RuntimeError("fit ended before the timed steps were done")
    return timer.seconds


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def measure(setting: Setting, device: str, repeats: int, workdir: Path) -> tuple[list[object], float]:
    """One table row and the median ratio: the arms alternate ``repeats`` times (their order rotates)."""
    precision = precision_for(device)
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    threads = torch.get_num_threads()
    torch.set_num_threads(setting.threads or threads)
    try:
        for repeat in range(repeats):
            order = list(ARMS) if repeat % 2 == 0 else list(ARMS)[::-1]
            for arm in order:
                took = arm_seconds(setting, ARMS[arm], device, precision, workdir / f"{setting.size}-{repeat}")
                seconds[arm].append(took)
    finally:
        torch.set_num_threads(threads)
    tokens = setting.steps * setting.tokens_per_step
    ratios = [one / split for one, split in zip(seconds["one forward"], seconds["2 micro-batches"])]  # tok/s ratio
    row = [
        setting.size,
        str(setting.threads or threads),
        precision,
        f"{setting.batch_size}x{setting.seq_len}",
        f"{setting.steps} (+{setting.warmup})",
        f"{tokens / median(seconds['one forward']):,.0f}",
        f"{tokens / median(seconds['2 micro-batches']):,.0f}",
        f"{median(ratios):.3f} ({spread(ratios, 3)})",
    ]
    return row, median(ratios)


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 3; 1 with --quick)")
    parser.add_argument("--sizes", nargs="+", help="model sizes to run (default: tiny small on CPU, small base on GPU)")
    parser.add_argument("--batch", type=int, help="global batch (sequences per step, even) instead of each size's")
    parser.add_argument("--steps", type=int, help="timed steps instead of each size's")
    args = parse(parser, argv)
    if args.batch is not None and (args.batch < 2 or args.batch % 2):
        parser.error(f"--batch: got {args.batch}; expected an even number >= 2 (it is split into 2 micro-batches)")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps: got {args.steps}; expected a number of steps >= 1")
    repeats = args.repeats or (1 if args.quick else 3)
    # The throughput benchmark's settings (an even global batch), without step checkpoints.
    settings = [replace(s, every_n_steps=None) for s in SETTINGS[(args.device, args.quick)]]
    if args.sizes:
        known = {s.size: s for s in SETTINGS[(args.device, not args.quick)] + settings}
        settings = [replace(known.get(size) or settings[0], size=size, every_n_steps=None) for size in args.sizes]
    if args.batch:
        settings = [replace(s, batch_size=args.batch) for s in settings]
    if args.steps:
        settings = [replace(s, steps=args.steps) for s in settings]
    if args.device == "cpu" and not args.threads:
        settings = [replace(s, threads=n) for s in settings for n in dict.fromkeys([1, os.cpu_count() or 1])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-micro-batches-") as tmp:
        for setting in settings:
            rows.append(measure(setting, args.device, repeats, Path(tmp))[0])
    notes = [
        "Both arms: `python -m lightning_app fit` in-process with the project's callbacks on the same model, data, "
        "global batch, precision and device. one forward = `--data.canonical_ranks 1` (the global batch in one "
        "forward); 2 micro-batches = `--data.canonical_ranks 2` with half the batch each, each with its canonical "
        "rank's random stream, the default on one device so that the run can go on to two devices bit for bit. "
        "Goal: 2 micro-batches / one forward >= 0.97."
    ]
    command = command_line("benchmarks.micro_batches", argv)
    print_report("Canonical micro-batches", args.device, command, markdown_table(HEADERS, rows), notes)


if __name__ == "__main__":
    main()
