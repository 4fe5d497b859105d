"""``python -m lightning_app plot RUN [RUN ...] -o curves.png``: compare runs in one figure.

Validation loss and perplexity against step, and against training wall time when it was logged, one curve per
experiment, labelled by ``pe_type`` and ``model_size``.

Each RUN is one of:

- a log folder (or a ``metrics.csv`` file), searched for the metrics files that `ResumableCSVLogger` writes
  (``logs/lm/<experiment>/metrics.csv``);
- a downloaded dataset version (or an attached one, ``/kaggle/input/<slug>/``): every version the sync publishes
  holds the run's whole metric history as ``metrics.csv`` beside ``manifest.json``;
- a dataset, ``OWNER/SLUG`` (when no such path exists here): its newest version's history, read through the API.

Files of one experiment -- the log folders of several Kaggle sessions of one run -- are stitched into one
continuous curve: rows are read file after file (ordered by their first logged step), and when two rows give a
metric for the same step the later one wins, because a resumed session logs again the steps after its checkpoint.
Settings come from ``hparams.yaml`` (or the CLI's ``config.yaml``) beside each ``metrics.csv``, or from a version's
``manifest.json``. Files with no training rows (logs of ``validate`` or ``test`` runs) are left out.

Example::

    python -m lightning_app plot logs /kaggle/input/my-notebook-output/logs -o curves.png
    python -m lightning_app plot alice/rope-small-1a2b3c4d-checkpoints alice/alibi-small-5e6f7a8b-checkpoints
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_app.commands import CommandParser, one_line_errors
from lightning_app.errors import ConfigError
from lightning_app.experiment import ARCHITECTURE_KEYS, WALL_TIME_KEY
from lightning_app.persistence.folder import MANIFEST_NAME, read_manifest
from lightning_app.persistence.history import HISTORY_NAME as METRICS_NAME
from lightning_app.persistence.manifest import CheckpointEntry

#: A log folder named by the CLI after the experiment, ``rope-small-1a2b3c4d``, or after a sweep's trial,
#: ``rope-small-1a2b3c4d-5e6f7a8b`` (its grid values hashed): the run's own name.
_EXPERIMENT_DIR = re.compile(r"^[a-z]+-[a-z]+-[0-9a-f]{8}(?:-[0-9a-f]{8})?$")
#: ``OWNER/SLUG``: a dataset, read through the API when no such path exists here.
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9-]{6,50}$")
PE_COLORS = {"sinusoidal": "tab:blue", "learned": "tab:orange", "rope": "tab:green", "alibi": "tab:red", "none": "0.45"}
PE_MARKERS = {"sinusoidal": "o", "learned": "s", "rope": "^", "alibi": "D", "none": "x"}
SIZE_STYLES = {"tiny": "-", "small": "--", "base": "-.", "large": ":"}
MATPLOTLIB_MISSING = 'plotting needs matplotlib: pip install -e ".[plot]"'


@dataclass
class Curve:
    """One experiment: its settings and, per metric, ``{step: value}`` stitched over all its metrics files."""

    key: str
    settings: dict[str, object]
    sources: list[Path] = field(default_factory=list)
    points: dict[str, dict[int, float]] = field(default_factory=dict)
    label: str = ""

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """Steps and values of ``metric``, ordered by step."""
        values = self.points.get(metric, {})
        steps = sorted(values)
        return steps, [values[s] for s in steps]

    def perplexity(self) -> tuple[list[int], list[float]]:
        """``val_ppl`` as logged, else ``exp(val_loss)``."""
        if self.points.get("val_ppl"):
            return self.series("val_ppl")
        steps, losses = self.series("val_loss")
        return steps, [math.exp(min(v, 50.0)) for v in losses]


def find_metrics(paths: Sequence[str | Path], download_to: Path | None = None) -> list[Path]:
    """Every ``metrics.csv`` given or found under the given folders, or read from the dataset ``OWNER/SLUG`` (into
    ``download_to``); `ConfigError` for a path that has none."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists() and download_to is not None and _DATASET.match(str(raw)):
            path = download_history(str(raw), download_to)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(path.rglob(METRICS_NAME))
        else:
            raise ConfigError(f"{raw}: no such file or folder (nor a dataset OWNER/SLUG)")
        if not files:
            raise ConfigError(f"{raw}: no {METRICS_NAME} in it (logs are in logs/lm/<experiment>/ by default)")
        found += [f for f in files if f.resolve() not in {g.resolve() for g in found}]
    return found


def download_history(dataset: str, into: Path) -> Path:
    """The metric history and manifest of ``dataset``'s newest version, written into ``into/<slug>/`` (a version
    folder as `find_metrics` reads it). One line (`ConfigError`) when the dataset cannot be read or holds none."""
    from lightning_app.persistence.kaggle.store import KaggleDatasetStore
    from lightning_app.persistence.store import StoreError

    try:
        version = KaggleDatasetStore(dataset).read_version(texts=(METRICS_NAME, MANIFEST_NAME))
    except StoreError as error:
        raise ConfigError(f"{dataset}: could not read the dataset ({error})") from None
    if METRICS_NAME not in version.texts:
        raise ConfigError(
            f"{dataset}: version {version.number} holds no {METRICS_NAME} (published before metric "
            "histories travelled with checkpoints?)"
        )
    folder = into / dataset.split("/")[1]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in version.texts.items():
        (folder / name).write_text(text)
    return folder


def _manifest_newest(metrics: Path) -> CheckpointEntry | None:
    """The newest entry of the ``manifest.json`` beside ``metrics`` (a dataset version), if there is one."""
    manifest = read_manifest(metrics.parent)
    return next(iter(manifest.newest_first()), None) if manifest is not None else None


def read_settings(metrics: Path) -> dict[str, object]:
    """The model settings of the run that wrote ``metrics``: ``hparams.yaml``, else ``config.yaml``'s ``model``,
    else (a dataset version) the architecture its ``manifest.json`` records."""
    newest = _manifest_newest(metrics)
    if newest is not None and isinstance(newest.settings, dict) and "pe_type" in newest.settings:
        return dict(newest.settings)
    for name, section in (("hparams.yaml", None), ("config.yaml", "model")):
        path = metrics.parent / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if section is not None:
            data = data.get(section) or {}
            data = data.get("init_args", data) if isinstance(data, dict) else {}
        if isinstance(data, dict) and "pe_type" in data:
            return data
    return {}


def experiment_key(metrics: Path, settings: dict[str, object]) -> str:
    """What ties the metrics files of one experiment together across sessions and machines."""
    if _EXPERIMENT_DIR.match(metrics.parent.name):
        return metrics.parent.name
    if (newest := _manifest_newest(metrics)) is not None and newest.run_id:
        return f"run {newest.run_id}"  # a dataset version (``<experiment>-checkpoints``, a trial's): its run
    if settings:
        return "|".join(f"{k}={settings.get(k)}" for k in ARCHITECTURE_KEYS)
    return str(metrics.resolve())


def read_rows(metrics: Path) -> list[dict[str, str]]:
    """The rows of one ``metrics.csv``, in file order (empty cells dropped)."""
    with open(metrics, newline="") as file:
        return [{k: v for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(file)]


def _has_training_rows(metrics: Path) -> bool:
    with open(metrics, newline="") as file:
        return any(row.get("train_loss") for row in csv.DictReader(file))


def stitch(files: Sequence[Path]) -> dict[str, dict[int, float]]:
    """Merge metrics files of one experiment: file order by first step, later rows win for a repeated step."""
    tables = [read_rows(f) for f in files]
    order = sorted(range(len(files)), key=lambda i: (_first_step(tables[i]), files[i].stat().st_mtime))
    points: dict[str, dict[int, float]] = {}
    for index in order:
        for row in tables[index]:
            if "step" not in row:
                continue
            step = int(float(row["step"]))
            for metric, text in row.items():
                if metric in ("step", "epoch"):
                    continue
                try:
                    points.setdefault(metric, {})[step] = float(text)
                except ValueError:
                    continue
    return points


def _first_step(rows: list[dict[str, str]]) -> float:
    steps = [float(r["step"]) for r in rows if "step" in r]
    return min(steps) if steps else math.inf


def load_curves(paths: Sequence[str | Path], download_to: Path | None = None) -> list[Curve]:
    """One `Curve` per experiment found under ``paths`` (datasets ``OWNER/SLUG`` read into ``download_to``),
    labelled ``pe_type (model_size)``."""
    curves: dict[str, Curve] = {}
    for metrics in find_metrics(paths, download_to):
        if not _has_training_rows(metrics):
            continue  # a `validate` or `test` run's log: no curve of its own
        settings = read_settings(metrics)
        key = experiment_key(metrics, settings)
        curves.setdefault(key, Curve(key, settings)).sources.append(metrics)
    for curve in curves.values():
        curve.points = stitch(curve.sources)
    _label(list(curves.values()))
    return sorted((c for c in curves.values() if c.points.get("val_loss")), key=_order)


def _label(curves: list[Curve]) -> None:
    for curve in curves:
        pe, size = curve.settings.get("pe_type"), curve.settings.get("model_size")
        curve.label = f"{pe} ({size})" if pe else curve.sources[0].parent.name
    counts = Counter(c.label for c in curves)
    for curve in curves:
        if counts[curve.label] > 1:  # same pe_type and size: other dimensions or other data
            tag = curve.key.rsplit("-", 1)[-1] if _EXPERIMENT_DIR.match(curve.key) else curve.sources[0].parent.name
            curve.label += f" [{tag}]"


def _order(curve: Curve) -> tuple[int, int, str]:
    """Positional encodings in the README's order, then model sizes from small to large."""
    pe, size = curve.settings.get("pe_type"), curve.settings.get("model_size")
    pes, sizes = list(PE_COLORS), list(SIZE_STYLES)
    return (pes.index(pe) if pe in pes else len(pes), sizes.index(size) if size in sizes else len(sizes), curve.label)


def shared_styles(settings) -> bool:
    """Whether two runs would get one colour and line style (the same ``pe_type`` and size: a sweep over a training
    knob): then each gets a colour of its own."""
    pairs = [(s.get("pe_type"), s.get("model_size")) for s in settings]
    return len(set(pairs)) < len(pairs)


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 300:
        return 1.0, "s"
    return (60.0, "min") if seconds < 3 * 3600 else (3600.0, "h")


def draw(
    curves: list[Curve], output: Path, title: str | None = None, x: str = "both", legend: str = "pe_type (model_size)"
) -> Path:
    """Write the figure to ``output`` (format from its suffix).

    Args:
        curves: what to draw.
        output: the image file; its suffix picks the format (png, svg, pdf...).
        title: the figure's title.
        x: ``step``, ``time`` (training wall time, where logged) or ``both`` (one row each).
        legend: the legend's title (what the labels say).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(MATPLOTLIB_MISSING) from None
    timed = [c for c in curves if c.points.get(WALL_TIME_KEY)]
    if x == "time" and not timed:
        raise ConfigError(f"no {WALL_TIME_KEY} logged: plot against --x step")
    axes_x = {"step": ["step"], "time": ["time"], "both": ["step", "time"] if timed else ["step"]}[x]
    fig, axes = plt.subplots(len(axes_x), 2, figsize=(12, 4.2 * len(axes_x)), squeeze=False)
    top_time = max((max(c.points[WALL_TIME_KEY].values()) for c in timed), default=0.0)
    scale, unit = _time_unit(top_time)
    palette = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    shared = shared_styles(curve.settings for curve in curves)
    for curve in curves:
        pe = str(curve.settings.get("pe_type"))
        style = {
            "color": (None if shared else PE_COLORS.get(pe)) or next(palette, "black"),
            "linestyle": SIZE_STYLES.get(str(curve.settings.get("model_size")), "-"),
            "marker": PE_MARKERS.get(pe, "o"),
            "markersize": 4,
            "linewidth": 1.4,
            "alpha": 0.85,
            "label": curve.label + (f", {len(curve.sources)} sessions" if len(curve.sources) > 1 else ""),
        }
        clock = curve.points.get(WALL_TIME_KEY, {})
        for column, (steps, values) in enumerate((curve.series("val_loss"), curve.perplexity())):
            for row, kind in enumerate(axes_x):
                pairs = (
                    list(zip(steps, values))
                    if kind == "step"
                    else [(clock[s] / scale, v) for s, v in zip(steps, values) if s in clock]
                )
                if pairs:
                    axes[row][column].plot(*zip(*pairs), **style)
    for row, kind in enumerate(axes_x):
        for column, name in enumerate(("validation loss", "validation perplexity")):
            axis = axes[row][column]
            axis.set_xlabel("step" if kind == "step" else f"training time ({unit})")
            axis.set_ylabel(name)
            axis.grid(True, alpha=0.3)
    axes[0][0].legend(title=legend, fontsize=9)
    fig.suptitle(title or "Validation curves by positional encoding")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m lightning_app plot",
        description="Validation loss and perplexity of several runs in one figure, against step and wall time. "
        "Log folders of several sessions of one run are stitched into one curve.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a log folder (searched for metrics.csv) or file, a downloaded dataset version, or a dataset OWNER/SLUG",
    )
    parser.add_argument("-o", "--output", default="curves.png", help="the image to write (default: curves.png)")
    parser.add_argument("--title", default=None, help="the figure's title")
    parser.add_argument(
        "--x",
        choices=("step", "time", "both"),
        default="both",
        help="plot against step, training wall time, or both, one row each (default: both, when time was logged)",
    )
    return parser


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0, or 2 after printing a one-line error)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="plot-") as downloads:
        curves = load_curves(args.runs, Path(downloads))
    if not curves:
        raise ConfigError("no validation loss logged in " + ", ".join(args.runs))
    output = draw(curves, Path(args.output), args.title, args.x)
    print(f"Wrote {output} ({len(curves)} curve{'s' * (len(curves) != 1)}: {', '.join(c.label for c in curves)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
