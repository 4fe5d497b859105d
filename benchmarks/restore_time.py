"""Restore time: process start to the first training step of ``fit --resume`` from an attached input.

A first ``fit`` writes a checkpoint; its newest checkpoint and manifest are staged into an "attached input"
folder exactly as a dataset version holds them (``/kaggle/input/<slug>/`` on Kaggle). Then, alternating:

- **resume**: ``python -m lightning_app fit --resume --restore.input_dir <input>`` in a fresh working directory:
  it finds the checkpoint, verifies its sha256, copies it into ``checkpoints/``, loads it and continues.
- **fresh**: the same command without ``--resume``: process start, imports, model and data, no checkpoint.
- **copy**: ``shutil.copyfile`` of the checkpoint file (what the simplest resume would have to do first).

Each ``fit`` runs as its own process; a callback (``FirstStepProbe``) writes the wall clock at the start of
the first training batch and ends the process there. The goal compares resume with fresh + copy.

Usage::

    python -m benchmarks.restore_time            # small (~230 MB checkpoint) on CPU, base on a GPU
    python -m benchmarks.restore_time --quick    # tiny: checks that it runs
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
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
    spread,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent
ARMS = ("resume", "fresh", "copy")
#: Imported by the ``fit`` processes (this module runs as ``__main__``).
PROBE_CLASS = "benchmarks.restore_time.FirstStepProbe"


class FirstStepProbe(Callback):
    """Writes ``time.time()`` to ``path`` when the first training batch starts, then ends the process at once.

    Args:
        path: file to write the wall-clock time to.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        Path(self.path).write_text(repr(time.time()))
        os._exit(0)  # nothing after the first step is measured; skip the teardown


def fit_config(size: str, device: str, probe: Path | None, input_dir: Path) -> dict:
    """The ``--config`` both runs share; with ``probe`` the first training step ends the process."""
    trainer: dict = {
        "accelerator": "gpu" if device == "cuda" else "cpu",
        "devices": 1,
        "precision": precision_for(device),
        "max_epochs": 3,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,
    }
    if probe is not None:
        trainer["callbacks"] = [{"class_path": PROBE_CLASS, "init_args": {"path": str(probe)}}]
    return {
        "seed_everything": 1234,
        "trainer": trainer,
        "model": {"pe_type": "sinusoidal", "model_size": size},
        "data": {
            "class_path": "lightning_app.data.SyntheticDataModule",
            "init_args": {"vocab_size": 256, "seq_len": 64, "batch_size": 8, "num_train_sequences": 256},
        },
        "checkpoint": {"dirpath": "checkpoints"},
        "sync": {"enabled": False},
        "restore": {"input_dir": str(input_dir)},
    }


def child_env(home: Path) -> dict[str, str]:
    """No Kaggle credentials from this machine; the repository importable (for the probe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "FAKE_KAGGLE"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def fit(config: Path, workdir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lightning_app", "fit", "--config", str(config), *extra]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def make_input(root: Path, size: str, device: str, env: dict[str, str]) -> Path:
    """Train two steps, then stage the newest checkpoint and its manifest as an attached dataset would hold them."""
    from lightning_app.persistence.folder import CheckpointFolder

    input_dir = root / "input"
    config = write_config(root / "producer.yaml", fit_config(size, device, None, input_dir))
    producer = root / "producer"
    fit(config, producer, env, "--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "1")
    folder = CheckpointFolder(producer / "checkpoints")
    newest = folder.manifest.newest_first()[0]
    staged = folder.stage([newest])
    attached = input_dir / "lm-checkpoints"
    attached.mkdir(parents=True)
    for path in staged.iterdir():  # a copy: an attached input is another file system, never a link
        shutil.copyfile(path, attached / path.name)
    shutil.rmtree(producer)
    return attached / newest.file


def time_fit(config: Path, workdir: Path, env: dict[str, str], probe: Path, *extra: str) -> float:
    """Seconds from just before the process is started to the start of its first training batch."""
    probe.unlink(missing_ok=True)
    start = time.time()
    fit(config, workdir, env, *extra)
    seconds = float(probe.read_text()) - start
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def time_copy(source: Path, target: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(source, target)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--size", help="model size (default: small on CPU, base on GPU; tiny with --quick)")
    parser.add_argument("--repeats", type=int, help="alternated runs of each arm (default 3; 1 with --quick)")
    args = parse(parser, argv)
    size = args.size or ("tiny" if args.quick else "base" if args.device == "cuda" else "small")
    repeats = args.repeats or (1 if args.quick else 3)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        root = Path(tmp)
        env = child_env(root / "home")
        checkpoint = make_input(root, size, args.device, env)
        probe = root / "first_step.txt"
        config = write_config(root / "fit.yaml", fit_config(size, args.device, probe, checkpoint.parent.parent))
        for repeat in range(repeats):
            order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
            for arm in order:
                if arm == "copy":
                    times[arm].append(time_copy(checkpoint, root / "copy.ckpt"))
                else:
                    extra = ("--resume",) if arm == "resume" else ()
                    times[arm].append(time_fit(config, root / f"{arm}-{repeat}", env, probe, *extra))
        megabytes = checkpoint.stat().st_size / 1e6
    baseline = [f + c for f, c in zip(times["fresh"], times["copy"])]
    ratios = [r / b for r, b in zip(times["resume"], baseline)]
    rows = [
        ["fit --resume (attached input)", f"{median(times['resume']):.2f}", spread(times["resume"]), _x(ratios)],
        ["fit, fresh start", f"{median(times['fresh']):.2f}", spread(times["fresh"]), "-"],
        ["plain copy of the checkpoint", f"{median(times['copy']):.2f}", spread(times["copy"]), "-"],
        ["fresh start + copy", f"{median(baseline):.2f}", spread(baseline), "1.00x"],
    ]
    notes = [
        f"Model `{size}`, checkpoint {megabytes:,.0f} MB, {repeats} alternated runs of each arm (medians). Seconds "
        "from process start to the start of the first training batch. Goal: resume <= 1.2x (fresh start + copy)."
    ]
    headers = ("arm", "seconds (median)", "range", "vs fresh + copy")
    print_report("Restore time", args.device, command_line("benchmarks.restore_time", argv),
                 markdown_table(headers, rows), notes)  # fmt: skip


def _x(ratios: list[float]) -> str:
    return f"{median(ratios):.2f}x ({spread(ratios)})"


if __name__ == "__main__":
    main()
