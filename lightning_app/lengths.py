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
import importlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from lightning_app.errors import ConfigError, bad_value
from lightning_app.plot import MATPLOTLIB_MISSING, PE_COLORS, PE_MARKERS, SIZE_STYLES

DEFAULT_DATA = {"class_path": "lightning_app.data.SyntheticDataModule", "init_args": {}}


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


def find_checkpoint(raw: str) -> Path:
    """A ``.ckpt`` file as given, or a run folder's newest checkpoint (its own or its ``checkpoints/``)."""
    from lightning_app.persistence.manifest import Manifest

    path = Path(raw)
    if path.is_file():
        return path
    for folder in (path, path / "checkpoints"):
        manifest = Manifest.load(folder) if folder.is_dir() else None
        if manifest is not None and manifest.entries:
            return folder / manifest.newest_first()[0].file
        found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        if found:
            return found[-1]
    raise bad_value("CKPT_OR_RUN_DIR", raw, "a .ckpt file or a run folder holding checkpoints")


def read_data_config(path: Path) -> dict:
    """The ``data`` section of a CLI config file as ``{"class_path", "init_args"}``."""
    try:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError) as error:
        raise bad_value("--config", str(path), f"a readable YAML config file ({error})") from None
    if "class_path" not in data:
        return {"class_path": DEFAULT_DATA["class_path"], "init_args": dict(data)}
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}


def training_data(checkpoint: Path, hparams: dict) -> dict:
    """The data section the run was trained with, found beside its logs; the synthetic default otherwise."""
    pattern = f"logs/lm/{hparams.get('pe_type')}-{hparams.get('model_size')}-*/config.yaml"
    roots = [checkpoint.parent, checkpoint.parent.parent]
    configs = sorted((c for root in roots for c in root.glob(pattern)), key=lambda p: p.stat().st_mtime)
    if configs:
        return read_data_config(configs[-1])
    return {"class_path": DEFAULT_DATA["class_path"], "init_args": {"vocab_size": hparams.get("vocab_size")}}


def load_model(checkpoint: Path, device: torch.device):
    """The `LanguageModel` of a checkpoint, in eval mode on ``device``, and its hyperparameters."""
    from lightning_app.module import LanguageModel

    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        hparams = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
    except Exception as error:
        raise bad_value("CKPT_OR_RUN_DIR", str(checkpoint), f"a Lightning checkpoint that loads ({error})") from None
    model = LanguageModel(**{**hparams, "compile": False})
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), hparams


def build_datamodule(data: dict, seq_len: int):
    """The data module of ``data`` (a config's ``data`` section) with ``seq_len`` replaced."""
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls(**{**data["init_args"], "seq_len": seq_len})
    except TypeError as error:  # an unknown --data.KEY
        raise bad_value("--data.*", sorted(data["init_args"]), f"settings of {class_name} ({error})") from None


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
    model, _ = load_model(run.path, device)
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


def draw(runs: Sequence[Run], lengths: Sequence[int], output: Path) -> Path:
    """Perplexity against length (log x axis), one curve per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(MATPLOTLIB_MISSING) from None
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        points = [(n, run.scores[n][1]) for n in lengths if not isinstance(run.scores[n], str)]
        pe = str(run.hparams.get("pe_type"))
        style = {"color": PE_COLORS.get(pe), "marker": PE_MARKERS.get(pe, "o")}
        style["linestyle"] = SIZE_STYLES.get(str(run.hparams.get("model_size")), "-")
        if points:
            axis.plot(*zip(*points), label=run.label, **style)
        if run.train_len:
            axis.axvline(run.train_len, color=style["color"], alpha=0.3, linestyle=":")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("sequence length (dotted: training length)")
    axis.set_ylabel("validation perplexity")
    axis.grid(True, alpha=0.3)
    axis.legend(title="pe_type (model_size)", fontsize=9)
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
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0, or 2 after printing a one-line error)."""
    parser = build_parser()
    parser.error = lambda message: _fail(message)  # one line, no usage block
    try:
        args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
        overrides = parse_overrides(extra)
        try:
            device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise bad_value("--device", args.device, "a torch device such as cpu, cuda or cuda:1") from None
        lengths = list(dict.fromkeys(args.lengths))
        runs = []
        for raw in args.runs:
            checkpoint = find_checkpoint(raw)
            hparams = load_model(checkpoint, torch.device("cpu"))[1]
            data = read_data_config(Path(args.config)) if args.config else training_data(checkpoint, hparams)
            data["init_args"].update(overrides)
            runs.append(Run(checkpoint, hparams, data))
        for run in runs:
            score(run, lengths, device)
        print(table(runs, lengths))
        if args.output:
            print(f"\nWrote {draw(runs, lengths, Path(args.output))}")
    except ConfigError as error:
        return _fail(str(error))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    raise SystemExit(main())
