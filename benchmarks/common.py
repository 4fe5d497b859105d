"""What the benchmarks share: the command line, device and precision, medians, the markdown table, the machine line.

Every benchmark prints the same report: a title, the machine it ran on, the command that produced it, and a
markdown table whose ratios were measured side by side in that one run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import yaml

#: The 1-minute load average when the benchmark started (other work on the machine skews the timings).
_load_at_start: float | None = None

#: Loggers that would print a line per run (model summary, "GPU available", checkpoint saved...).
_CHATTY_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "lightning_app")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick`` and ``--device``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings that run in seconds: checks the command, not the speed"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (auto: cuda when present)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and resolve ``--device auto``; ``--device cuda`` without a GPU is an error."""
    global _load_at_start
    with contextlib.suppress(OSError, AttributeError):
        _load_at_start = os.getloadavg()[0]
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the processes a benchmark starts
    return args


def precision_for(device: str) -> str:
    """The precision ``fit`` chooses by itself on ``device`` (bf16 where the GPU has it, fp32 on CPU)."""
    from lightning_app.precision import resolve_precision

    return resolve_precision("cpu" if device == "cpu" else "gpu")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype a plain loop uses for a Lightning precision flag; None for fp32."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a clock read afterwards includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``min-max`` of ``values``, for a table cell."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if values else "n/a"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; columns of numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [bool(cells) and all(_looks_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    head = text.split(" ", 1)[0].rstrip("x%").replace(",", "")
    try:
        float(head)
    except ValueError:
        return head in ("n/a", "-")
    return True


def machine_line(device: str) -> str:
    """``2 CPU cores (Intel Xeon ...), 23 GiB RAM, torch 2.13.0 (2 threads), pytorch-lightning 2.6.6, ...``."""
    import pytorch_lightning as pl

    parts = [f"{os.cpu_count()} CPU cores ({_cpu_model()})"]
    with contextlib.suppress(ValueError, OSError, AttributeError):
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM")
    if device == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)", f"pytorch-lightning {pl.__version__}"]
    if _load_at_start is not None:
        parts.append(f"load average {_load_at_start:.1f} at start")
    return ", ".join(parts)


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for row in info:
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run: ``python -m benchmarks.<name> ...``."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def print_report(title: str, device: str, command: str, table: str, notes: Sequence[str] = ()) -> None:
    """Print the report: title, machine, command, table, then one paragraph per note."""
    print(f"\n### {title}\n")
    print(f"Machine: {machine_line(device)}  ")
    print(f"Command: `{command}`\n")
    print(table)
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


@contextlib.contextmanager
def quiet(stdout: bool = True) -> Iterator[None]:
    """Silence what a Trainer prints per run: info logs, warnings and, with ``stdout``, the progress bar.

    The progress bar still draws, into ``/dev/null``: its per-step cost stays in what is measured.
    """
    levels = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS}
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            if stdout:
                sink = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(sink))
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def write_config(path: Path, config: dict) -> Path:
    """Write a ``fit`` config as YAML (what ``--config`` reads) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the body in ``path`` (``contextlib.chdir`` needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_fit(config_path: Path, callbacks: Sequence = (), extra_args: Sequence[str] = ()):
    """``python -m lightning_app fit --config PATH ...`` in this process, plus callback objects; returns the CLI.

    Run it inside `working_directory`: the CLI's defaults (``logs/``, ``checkpoints/``) are relative paths.
    """
    from lightning_app.commands.fit import make_cli

    return make_cli(["fit", "--config", str(config_path), *extra_args], callbacks)
