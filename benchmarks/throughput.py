"""Throughput: tokens/s of ``python -m lightning_app fit`` versus a plain PyTorch loop, side by side.

All arms train the same ``TransformerLM`` on the same synthetic data, batch, precision and optimizer (AdamW,
fused, the module's two parameter groups and warmup-cosine schedule; SDPA attention in the model itself):

- **plain loop**: a ``DataLoader`` over the same dataset, ``torch.autocast`` on GPU, nothing else.
- **fit**: the project's CLI (``TrainingCLI``, run in this process from a YAML config) with all its callbacks:
  ``KaggleModelCheckpoint``, ``KaggleDatasetSync`` publishing to a ``DirectoryStore``, the CLI's logger and
  progress bar (drawn into ``/dev/null``); no checkpoint falls inside the timed steps.
- **fit + saves**: the same with a step checkpoint every ``--every-n-steps`` steps, each also published, inside
  the timed steps: what the checkpoint copy and the background writer and publisher cost the loop. Beside it, a
  plain ``torch.save`` + fsync of the same checkpoint (its newest file, loaded back) is timed in the same run:
  the training time lost per save is reported as a ratio to what saving inline would have cost.

On CPU each setting runs in two regimes (``--regimes``, torch threads per run): one thread, which leaves a core
free for the writer as a GPU run does, and one thread per core, where the writer and the upload compete with
training.

Each arm reads the clock (after ``torch.cuda.synchronize`` on GPU) at the end of step ``warmup`` and of step
``warmup + steps``: start-up, compilation and the first steps are left out. The arms alternate ``--repeats``
times; the table gives medians, and the ratio is the median of the ratios of each alternated pair.

Usage::

    python -m benchmarks.throughput                 # tiny and small on CPU; small and base on a GPU
    python -m benchmarks.throughput --compile       # also both arms under torch.compile (--model.compile true)
    python -m benchmarks.throughput --quick         # seconds: checks that it runs
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
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
    run_fit,
    spread,
    synchronize,
    working_directory,
    write_config,
)
from benchmarks.plain_loop import DROPOUT, PE_TYPE, SEED, Setting, data_config, plain_loop

SETTINGS: dict[tuple[str, bool], list[Setting]] = {
    ("cpu", False): [Setting("tiny", 16, 128, 10, 80, 40), Setting("small", 4, 128, 3, 40, 10)],
    ("cuda", False): [Setting("small", 32, 512, 20, 200, 100), Setting("base", 16, 1024, 20, 100, 50)],
    ("cpu", True): [Setting("tiny", 8, 32, 2, 6, 3)],
    ("cuda", True): [Setting("tiny", 8, 32, 2, 6, 3)],
}


class StepTimer(Callback):
    """Reads the clock at the end of step ``warmup`` and of step ``warmup + steps`` (after a GPU sync)."""

    def __init__(self, warmup: int, steps: int, device: str) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self._start: float | None = None
        self.seconds: float | None = None

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.warmup:
            synchronize(self.device)
            self._start = time.perf_counter()
        elif step == self.warmup + self.steps and self._start is not None:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start


def fit_config(setting: Setting, device: str, precision: str) -> dict:
    """The Lightning arm's ``--config``: the CLI's own defaults (logger, progress bar) plus the project's callbacks.

    ``checkpoint`` and ``sync`` paths are relative: the arm runs in its own working directory.
    """
    return {
        "seed_everything": SEED,
        "trainer": {
            "accelerator": "gpu" if device == "cuda" else "cpu",
            "devices": 1,
            "precision": precision,
            "max_steps": setting.warmup + setting.steps,
            "log_every_n_steps": 10,  # as configs/default.yaml
            "num_sanity_val_steps": 0,  # before the timed steps anyway; saves a few seconds
        },
        "model": {
            "pe_type": PE_TYPE,
            "model_size": setting.size,
            "dropout": DROPOUT,
            "compile": setting.compile,
            **dict(setting.overrides),
        },
        "data": {"class_path": "lightning_app.data.SyntheticDataModule", "init_args": data_config(setting)},
        "checkpoint": {"dirpath": "checkpoints", "keep_last": 3, "every_n_train_steps": setting.every_n_steps},
        "sync": {"directory": "published"},
    }


def fit_arm(setting: Setting, device: str, precision: str, workdir: Path) -> tuple[float, float | None]:
    """Seconds for the timed steps of ``fit`` with the project's callbacks, run in the empty folder ``workdir``,
    and those of a plain ``torch.save`` + fsync of its newest checkpoint (None when it saved none)."""
    shutil.rmtree(workdir, ignore_errors=True)
    timer = StepTimer(setting.warmup, setting.steps, device)
    config = write_config(workdir / "fit.yaml", fit_config(setting, device, precision))
    try:
        with working_directory(workdir), quiet():
            run_fit(config, callbacks=[timer])
        saved = sorted((workdir / "checkpoints").glob("kaggle_epoch_*.ckpt"), key=lambda p: p.stat().st_mtime)
        inline = plain_save_seconds(saved[-1], workdir / "inline.ckpt") if saved else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if timer.seconds is None:
        raise RuntimeError("fit ended before the timed steps were done")
    return timer.seconds, inline


def plain_save_seconds(checkpoint: Path, target: Path) -> float:
    """What saving inline costs: ``torch.save`` of the same state to a file, then fsync."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    start = time.perf_counter()
    with open(target, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


ARMS = ("plain", "fit", "fit + saves")


def measure(setting: Setting, device: str, repeats: int, workdir: Path) -> tuple[list[object], dict[str, float]]:
    """One table row, and each arm's median tokens/s: the arms alternate ``repeats`` times (their order rotates)."""
    precision = precision_for(device)
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    inline: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(setting.threads or threads)
    try:
        for repeat in range(repeats):
            for arm in ARMS[repeat % 3 :] + ARMS[: repeat % 3]:
                if arm == "plain":
                    seconds[arm].append(plain_loop(setting, device, precision))
                    continue
                arm_setting = setting if arm == "fit + saves" else replace(setting, every_n_steps=None)
                took, saved = fit_arm(arm_setting, device, precision, workdir / f"{setting.size}-{repeat}")
                seconds[arm].append(took)
                if arm == "fit + saves" and saved is not None:
                    inline.append(saved)
    finally:
        torch.set_num_threads(threads)
    tokens = setting.steps * setting.tokens_per_step
    cells = [
        setting.size + (" (torch.compile)" if setting.compile else ""),
        str(setting.threads or threads),
        precision,
        f"{setting.batch_size}x{setting.seq_len}",
        f"{setting.steps} (+{setting.warmup})",
        f"{tokens / median(seconds['plain']):,.0f}",
    ]
    for arm in ARMS[1:]:
        ratios = [p / f for p, f in zip(seconds["plain"], seconds[arm])]  # = fit tok/s / plain tok/s, pair by pair
        cells += [f"{tokens / median(seconds[arm]):,.0f}", f"{median(ratios):.3f} ({spread(ratios, 3)})"]
    saves = setting.saves_timed
    lost = (median(seconds["fit + saves"]) - median(seconds["fit"])) / saves if saves else float("nan")
    plain_save = median(inline) if inline else float("nan")
    cells += [f"{saves} (every {setting.every_n_steps})", f"{lost:.2f}", f"{plain_save:.2f}"]
    cells.append(f"{lost / plain_save:.2f}x")
    return cells, {arm: tokens / median(times) for arm, times in seconds.items()}


HEADERS = (
    "model",
    "torch threads",
    "precision",
    "batch x seq",
    "timed steps (+warm-up)",
    "plain loop tok/s",
    "fit tok/s",
    "fit / plain (range)",
    "fit + saves tok/s",
    "fit + saves / plain (range)",
    "saves timed",
    "loop s lost / save",
    "torch.save + fsync s",
    "lost / torch.save",
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 3; 1 with --quick)")
    parser.add_argument("--sizes", nargs="+", help="model sizes to run (default: tiny small on CPU, small base on GPU)")
    parser.add_argument("--compile", action="store_true", help="also run both arms under torch.compile")
    parser.add_argument("--no-eager", action="store_true", help="with --compile: only the compiled rows")
    parser.add_argument("--every-n-steps", type=int, help="the fit arm's step-checkpoint interval")
    parser.add_argument(
        "--regimes", nargs="+", type=int, help="torch threads, a row each (CPU default: 1, one per core)"
    )
    args = parse(parser, argv)
    repeats = args.repeats or (1 if args.quick else 3)
    settings = SETTINGS[(args.device, args.quick)]
    if args.sizes:
        # This mode's settings win; a size it lacks takes the other mode's, or the first setting's batch.
        known = {s.size: s for s in SETTINGS[(args.device, not args.quick)] + SETTINGS[(args.device, args.quick)]}
        settings = [known.get(size) or replace(settings[0], size=size) for size in args.sizes]
    if args.every_n_steps:
        settings = [replace(s, every_n_steps=args.every_n_steps) for s in settings]
    regimes = args.regimes or ([1, os.cpu_count() or 1] if args.device == "cpu" and not args.threads else [])
    if regimes:
        settings = [replace(s, threads=n) for s in settings for n in dict.fromkeys(regimes)]
    if args.compile:
        compiled = [replace(s, compile=True) for s in settings]
        settings = compiled if args.no_eager else [x for pair in zip(settings, compiled) for x in pair]
    rows, rates = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        for setting in settings:
            row, rates[setting] = measure(setting, args.device, repeats, Path(tmp))
            rows.append(row)
    notes = [
        f"Medians of {repeats} alternated runs per arm; ratios are medians of the run-by-run ratios. plain loop = "
        "the model, data, batch, precision and fused AdamW, nothing else. fit = `python -m lightning_app fit` "
        "(in-process, the CLI's logger every 10 steps and its progress bar) with KaggleModelCheckpoint and "
        "KaggleDatasetSync publishing to a DirectoryStore, no save inside the timed steps; fit + saves = the same "
        "with step checkpoints, each also published, inside the timed steps; loop s lost / save = (fit + saves "
        "time - fit time) / saves, the training time one checkpoint + publish costs (amortise it over your "
        "checkpoint interval); torch.save + fsync = the median time to save the newest of those checkpoints inline, in "
        "the same run; lost / torch.save = their ratio. Goals: fit / plain >= 0.98; lost / torch.save <= 0.2x with a "
        "core free (1 thread), <= 1.0x with every core training."
    ]
    notes += _compile_notes(rates)
    command = command_line("benchmarks.throughput", argv)
    print_report("Throughput", args.device, command, markdown_table(HEADERS, rows), notes)


def _compile_notes(rates: dict[Setting, dict[str, float]]) -> list[str]:
    """``torch.compile`` speed-up per size, where both an eager and a compiled row were measured."""
    notes = []
    for setting, compiled in rates.items():
        eager = rates.get(replace(setting, compile=False)) if setting.compile else None
        if eager is not None:
            ratios = ", ".join(f"{arm} {compiled[arm] / eager[arm]:.2f}x" for arm in ARMS)
            notes.append(f"torch.compile / eager tokens/s for {setting.size} (medians): {ratios}.")
    return notes


if __name__ == "__main__":
    main()
