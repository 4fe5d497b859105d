"""``python -m lightning_app lengths CKPT_OR_RUN_DIR [...] --lengths 64 128 256 512``: train short, test long.

Validation loss and perplexity of each checkpoint at several sequence lengths (Press et al., ALiBi): for each
length ``L`` the run's data module is rebuilt with ``seq_len=L`` and its validation split -- the same windows
that ``python -m lightning_app validate --data.seq_len L`` reads -- is scored. The loss is the mean next-token
cross-entropy over every validation token, which is what ``validate`` logs as ``val_loss`` (all windows have the
same length, so Lightning's batch-size-weighted mean of batch means is the same number).

The data defaults to what the run trained on: the ``data`` section of ``--config`` when given, else of the
``config.yaml`` the CLI wrote beside the run's logs (``logs/lm/<pe>-<size>-*/config.yaml`` next to the
checkpoint folder), else the synthetic data at the model's vocabulary size. ``--data.KEY VALUE`` overrides a
setting; ``seq_len`` is what the command varies.

Example::

    python -m lightning_app lengths runs/alibi runs/learned --lengths 64 128 256 512 -o lengths.png
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from lightning_app.commands import CommandParser, one_line_errors
from lightning_app.commands.plot import MATPLOTLIB_MISSING, PE_COLORS, PE_MARKERS, SIZE_STYLES, shared_styles
from lightning_app.commands.trained_run import build_datamodule, find_checkpoint, read_data_config, training_data
from lightning_app.errors import ConfigError, bad_value
from lightning_app.module import LanguageModel


@dataclass
class Run:
    """One checkpoint, its data settings and its scores: ``{length: (loss, ppl)}`` or ``{length: reason}``."""

    path: Path
    hparams: dict
    data: dict
    scores: dict[int, tuple[float, float] | str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.hparams.get('pe_type')} ({self.hparams.get('model_size')})"

    @property
    def train_len(self) -> int | None:
        return self.data["init_args"].get("seq_len")


def batch_size_at(base_batch: int, train_len: int | None, length: int) -> int:
    """Windows per batch at ``length``: the training batch's token count, at least one window."""
    return max(1, base_batch * (train_len or length) // length)


@torch.no_grad()
def loss_at(model, windows, batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy over every token of ``windows`` (a dataset of ``(x, y)`` pairs)."""
    total, count = 0.0, 0
    for inputs, targets in DataLoader(windows, batch_size=batch_size, shuffle=False):
        logits = model(inputs.to(device))  # (B, T, V)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(), reduction="sum")
        total, count = total + losses.item(), count + targets.numel()
    return total / count


def score(run: Run, lengths: Sequence[int], device: torch.device) -> None:
    """Fill ``run.scores``: ``(loss, perplexity)`` per length, or why the model cannot take that length."""
    model, _ = LanguageModel.from_checkpoint(run.path, device)
    limit = model.model.pe.max_length
    base_batch = run.data["init_args"].get("batch_size", 32)
    for length in lengths:
        if limit is not None and length > limit:
            run.scores[length] = f"{run.hparams.get('pe_type')} positions stop at {limit} (model.pe.max_length)"
            continue
        datamodule = build_datamodule(run.data, length)
        loss = loss_at(model, datamodule.val_dataset, batch_size_at(base_batch, run.train_len, length), device)
        run.scores[length] = (loss, math.exp(min(loss, 50.0)))


def table(runs: Sequence[Run], lengths: Sequence[int]) -> str:
    """One markdown table: a row per run, a column per length (``*``: trained at it), cells ``ppl (loss)``."""
    trained = {r.train_len for r in runs}
    header = ["run"] + [f"{n}*" if n in trained else str(n) for n in lengths]
    rows, notes = [], {}
    for run in runs:
        cells = [run.label]
        for n in lengths:
            value = run.scores[n]
            if isinstance(value, str):
                mark = notes.setdefault(value, len(notes) + 1)
                cells.append(f"n/a [{mark}]")
            else:
                cells.append(f"{value[1]:.3f} ({value[0]:.4f})")
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    by_len = ", ".join(f"{r.label}: {r.train_len}" for r in runs)
    footer = [f"\n`*` training length ({by_len}). Cells: validation perplexity (loss in nats)."]
    footer += [f"[{mark}] n/a: {reason}" for reason, mark in notes.items()]
    return "\n".join(lines + footer)


def draw(runs: Sequence[Run], lengths: Sequence[int], output: Path, legend: str = "pe_type (model_size)") -> Path:
    """Perplexity against length (log x axis), one curve per run; ``legend`` titles what the labels say."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(MATPLOTLIB_MISSING) from None
    fig, axis = plt.subplots(figsize=(7, 4.5))
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    shared = shared_styles(run.hparams for run in runs)
    for run in runs:
        points = [(n, run.scores[n][1]) for n in lengths if not isinstance(run.scores[n], str)]
        pe = str(run.hparams.get("pe_type"))
        style = {"color": next(palette, None) if shared else PE_COLORS.get(pe), "marker": PE_MARKERS.get(pe, "o")}
        style["linestyle"] = SIZE_STYLES.get(str(run.hparams.get("model_size")), "-")
        if points:
            axis.plot(*zip(*points), label=run.label, **style)
        if run.train_len:
            axis.axvline(run.train_len, color=style["color"], alpha=0.3, linestyle=":")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("sequence length (dotted: training length)")
    axis.set_ylabel("validation perplexity")
    axis.grid(True, alpha=0.3)
    axis.legend(title=legend, fontsize=9)
    axis.set_title("Train short, test long")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _length(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 2:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected an integer >= 2")
    return value


def parse_overrides(extra: Sequence[str]) -> dict:
    """``--data.KEY VALUE`` (or ``--data.KEY=VALUE``) pairs as ``{KEY: value}``, values read as YAML."""
    overrides, items = {}, list(extra)
    while items:
        flag = items.pop(0)
        key, eq, value = flag.partition("=")
        if not key.startswith("--data.") or len(key) == len("--data."):
            raise bad_value("option", flag, "--lengths, -o, --config, --device or --data.KEY VALUE")
        if not eq:
            if not items:
                raise bad_value(key, None, "a value after it")
            value = items.pop(0)
        overrides[key[len("--data.") :]] = yaml.safe_load(value)
    if "seq_len" in overrides:
        raise bad_value("--data.seq_len", overrides["seq_len"], "no value: the lengths come from --lengths")
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m lightning_app lengths",
        description="Validation perplexity of checkpoints at several sequence lengths ('train short, test long'). "
        "Other --data.KEY VALUE options override the run's data settings.",
    )
    parser.add_argument("runs", nargs="+", metavar="CKPT_OR_RUN_DIR", help="a .ckpt file, or a run folder")
    parser.add_argument("--lengths", nargs="+", type=_length, required=True, help="sequence lengths, each >= 2")
    parser.add_argument("-o", "--output", help="also draw perplexity against length into this image")
    parser.add_argument("--config", help="a CLI config file whose data section to use (default: the run's own)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    return parser


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0, or 2 after printing a one-line error)."""
    args, extra = build_parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
    overrides = parse_overrides(extra)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise bad_value("--device", args.device, "a torch device such as cpu, cuda or cuda:1") from None
    lengths = list(dict.fromkeys(args.lengths))
    runs = []
    for raw in args.runs:
        checkpoint = find_checkpoint(raw)
        hparams = LanguageModel.from_checkpoint(checkpoint)[1]
        data = read_data_config(Path(args.config)) if args.config else training_data(checkpoint, hparams)
        data["init_args"].update(overrides)
        runs.append(Run(checkpoint, hparams, data))
    for run in runs:
        score(run, lengths, device)
    print(table(runs, lengths))
    if args.output:
        print(f"\nWrote {draw(runs, lengths, Path(args.output))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
