"""Sweep: a grid's total time with its trials side by side against one after another with every device.

A two-trial grid (``model.pe_type=rope,alibi``) of the same small model is run by ``python -m lightning_app sweep``
(each trial a fresh ``fit`` process, as in production; syncing off), in a fresh working directory per run, the arms
alternating:

- on CPU: **side by side** (``--sweep.parallel 2``, one thread per trial) against **one after another** with both
  threads (``--sweep.parallel 1``, ``OMP_NUM_THREADS`` = the cores) and against **one after another under 2-rank
  DDP** (gloo, one thread per rank), the way a multi-device machine runs one trial at a time;
- on two or more GPUs: side by side (one GPU each) against one after another under DDP over every GPU.

The time is the sweep command's, start to exit: start-up of each trial included, since that is what a sweep costs.
The training seconds (``wall_time``, summed over a run's trials) say how much of it was training.

Usage::

    python -m benchmarks.sweep_parallel                 # 150 steps per trial, 2 repetitions
    python -m benchmarks.sweep_parallel --quick         # a few steps: checks that it runs
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import command_line, make_parser, markdown_table, median, parse, print_report, spread

REPO = Path(__file__).resolve().parent.parent
GRID = ("--sweep.grid", "model.pe_type=rope,alibi")


def _common(steps: int, quick: bool, device: str) -> list[str]:
    config = "smoke.yaml" if quick else "default.yaml"
    return [
        "--config",
        str(REPO / "configs" / config),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(steps),
        "--trainer.limit_val_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "gpu" if device == "cuda" else "cpu",
        "--sync.enabled",
        "false",
        "--restore.input_dir",
        "nothing-attached",
    ]


def arms(device: str, cores: int, gpus: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each arm's extra sweep options and environment."""
    if device == "cuda":
        return {
            "side by side (1 GPU each)": (["--sweep.parallel", "2"], {}),
            f"one after another (DDP, {gpus} GPUs)": (
                ["--sweep.parallel", "1", "--trainer.devices", str(gpus), "--trainer.strategy", "ddp"],
                {},
            ),
        }
    return {
        "side by side (1 thread each)": (["--sweep.parallel", "2"], {"OMP_NUM_THREADS": "1"}),
        f"one after another ({cores} threads)": (["--sweep.parallel", "1"], {"OMP_NUM_THREADS": str(cores)}),
        "one after another (2-rank gloo DDP, 1 thread each)": (
            ["--sweep.parallel", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
            {"OMP_NUM_THREADS": "1"},
        ),
    }


def run_sweep(common: Sequence[str], extra: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """One sweep in a fresh folder: its seconds start to exit, and its trials' training seconds (summed)."""
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as work:
        environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
        environment.pop("LIGHTNING_APP_SESSION_START", None)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lightning_app", "sweep", *common, *GRID, *extra],
            cwd=work,
            env=environment,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the sweep failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        return seconds, sum(_training_seconds(path) for path in Path(work, "logs", "lm").glob("*/metrics.csv"))


def _training_seconds(metrics: Path) -> float:
    with open(metrics, newline="") as file:
        times = [float(row["wall_time"]) for row in csv.DictReader(file) if row.get("wall_time")]
    return max(times, default=0.0)


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per trial (default 150)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternating (default 2)")
    args = parse(parser, argv)
    steps, repeats = (8, 1) if args.quick else (args.steps, args.repeats)
    cores = len(os.sched_getaffinity(0))
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus < 2:
        raise SystemExit("side by side on GPUs needs two GPUs: run with --device cpu, or on T4 x2")
    chosen = arms(args.device, cores, gpus)
    common = _common(steps, args.quick, args.device)
    elapsed: dict[str, list[float]] = {name: [] for name in chosen}
    training: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(repeats):
        for name, (extra, env) in chosen.items():
            seconds, trained = run_sweep(common, extra, env)
            elapsed[name].append(seconds)
            training[name].append(trained)
    base = median(elapsed[next(iter(chosen))])
    rows = [
        [
            name,
            f"{median(elapsed[name]):.1f}",
            spread(elapsed[name], 1),
            f"{median(training[name]):.1f}",
            f"{median(elapsed[name]) / base:.2f}x",
        ]
        for name in chosen
    ]
    headers = ["arm", "grid s", "range", "training s (trials summed)", "vs side by side"]
    notes = [
        f"Two trials of {steps} steps each ({'smoke' if args.quick else 'default'}.yaml), {repeats} run(s) per arm, "
        "alternating; each trial is a fresh `fit` process (start-up included). Above 1.00x: side by side is faster."
    ]
    print_report(
        "Sweep: side by side vs one after another",
        args.device,
        command_line("benchmarks.sweep_parallel", argv),
        markdown_table(headers, rows),
        notes,
    )
    return elapsed


if __name__ == "__main__":
    main()
