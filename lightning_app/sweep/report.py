"""The sweep's report: what the comparison found, written to ``./sweep-report/`` and published so that it outlives the
session.

- ``curves.png``: validation loss and perplexity against step for every trial (`lightning_app.commands.plot`), from
  each trial's metric history (its log folder when it ran here, else the ``metrics.csv`` its newest version holds);
- ``lengths.md`` and ``lengths.png``: each finished trial's final checkpoint scored at 1, 2, 4 and 8 times its
  training length (`lightning_app.commands.lengths`);
- ``README.md``: the table of trials, their final validation, and the lengths table;
- ``report.json``: the lengths scores by trial and final checkpoint (sha256), so that a later report scores only the
  trials finished since (it reads them back from the published report).

Without matplotlib there are no PNGs, and the README says so in one line. The folder is published as a version of
the sweep's own small private dataset ``<owner>/<sweep name>-report`` (or ``<sync.directory>/<sweep name>-report``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lightning_app.commands import lengths as lengths_command
from lightning_app.commands import plot
from lightning_app.errors import ConfigError
from lightning_app.experiment import WALL_TIME_KEY
from lightning_app.persistence.folder import sha256_of
from lightning_app.persistence.history import HISTORY_NAME
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.retry import retry_call
from lightning_app.persistence.store import CheckpointStore, StoreError
from lightning_app.sweep.plan import SweepPlan, Trial
from lightning_app.sweep.state import TrialState

log = logging.getLogger("lightning_app.sweep")

REPORT_DIR = Path("sweep-report")
SCORES_NAME = "report.json"
#: Each finished trial is scored at these multiples of its training length.
LENGTH_FACTORS = (1, 2, 4, 8)


@dataclass
class TrialMaterial:
    """What the report draws on for one trial.

    Attributes:
        trial: the trial.
        state: where it stands.
        history: its ``metrics.csv`` (None: none found).
        checkpoint: its final checkpoint and entry, for a finished trial whose checkpoint could be had.
    """

    trial: Trial
    state: TrialState
    history: Path | None = None
    checkpoint: tuple[Path, CheckpointEntry] | None = None


class _ScoredTrial(lengths_command.Run):
    """A `lengths` run labelled with the trial's setting."""

    def __init__(self, path: Path, hparams: dict, data: dict, label: str) -> None:
        super().__init__(path, hparams, data)
        self._label = label

    @property
    def label(self) -> str:
        return self._label


def gather(
    plan: SweepPlan, states: dict[str, TrialState], stores: dict[str, CheckpointStore | None], scratch: Path
) -> list[TrialMaterial]:
    """Each trial's history and, when finished, its final checkpoint: from here when they are here, else from its
    newest published version (downloaded into ``scratch``)."""
    materials = []
    for trial in plan.trials:
        state, store = states[trial.name], stores.get(trial.name)
        material = TrialMaterial(trial, state)
        local_history = plan.logs / "lm" / trial.name / HISTORY_NAME
        if local_history.is_file():
            material.history = local_history
        elif store is not None and state.published is not None:
            material.history = _published_history(store, state.published[1], scratch / trial.name)
        if state.finished:
            material.checkpoint = _final_checkpoint(plan.folder(trial), state, store, scratch / trial.name)
        materials.append(material)
    return materials


def _published_history(store: CheckpointStore, version: int, into: Path) -> Path | None:
    try:
        text = retry_call(lambda: store.read_version(version, texts=(HISTORY_NAME,)), attempts=3).texts
    except StoreError as error:
        log.warning(f"The metric history of {store.description} version {version} could not be read ({error})")
        return None
    if HISTORY_NAME not in text:
        return None
    into.mkdir(parents=True, exist_ok=True)
    (into / HISTORY_NAME).write_text(text[HISTORY_NAME])
    return into / HISTORY_NAME


def _final_checkpoint(
    folder: Path, state: TrialState, store: CheckpointStore | None, into: Path
) -> tuple[Path, CheckpointEntry] | None:
    """The finished trial's final checkpoint: its folder's, else downloaded from its newest version."""
    from lightning_app.persistence.folder import read_manifest

    local = read_manifest(folder)
    for entry in local.entries.values() if local else ():
        path = folder / entry.file
        if entry.is_final and path.is_file() and (not entry.sha256 or sha256_of(path) == entry.sha256):
            return path, entry
    if store is None or state.published is None or not state.published[0].is_final:
        return None
    entry, version = state.published
    try:
        into.mkdir(parents=True, exist_ok=True)
        path = retry_call(lambda: store.fetch_file(entry.file, into, version, entry.size or None), attempts=3)
    except StoreError as error:
        log.warning(f"The final checkpoint of {store.description} could not be downloaded ({error})")
        return None
    if entry.sha256 and sha256_of(path) != entry.sha256:
        log.warning(f"{entry.file} of {store.description} version {version} does not match its manifest")
        return None
    return path, entry


# -- lengths -------------------------------------------------------------------------------------------------------


def _lengths_for(materials: list[TrialMaterial]) -> list[int]:
    """Every multiple of every scored trial's training length (they share one when the grid does not vary it)."""
    found = {factor * m.trial.train_len for m in materials for factor in LENGTH_FACTORS if m.trial.train_len}
    return sorted(found)


def score_lengths(materials: list[TrialMaterial], previous: dict, device) -> tuple[list[_ScoredTrial], list[int], dict]:
    """Score each finished trial's final checkpoint at every length (reusing ``previous`` scores of the same
    checkpoint); returns the scored runs, the lengths and the scores to keep (``report.json``'s ``trials``)."""
    scored = [m for m in materials if m.checkpoint is not None and m.trial.train_len]
    lengths = _lengths_for(scored)
    runs, kept = [], {}
    for material in scored:
        path, entry = material.checkpoint
        trial = material.trial
        run = _ScoredTrial(path, dict(trial.settings), trial.data, trial.values)
        before = previous.get(trial.name, {})
        if before.get("sha256") == entry.sha256 and entry.sha256:
            run.scores = {int(k): (tuple(v) if isinstance(v, list) else v) for k, v in before["scores"].items()}
        missing = [n for n in lengths if n not in run.scores]
        if missing:
            lengths_command.score(run, missing, device)
        run.scores = {n: run.scores[n] for n in lengths}
        runs.append(run)
        kept[trial.name] = {
            "file": entry.file,
            "sha256": entry.sha256,
            "scores": {str(n): list(v) if isinstance(v, tuple) else v for n, v in run.scores.items()},
        }
    return runs, lengths, kept


# -- the folder ----------------------------------------------------------------------------------------------------


def _final_validation(material: TrialMaterial) -> list[str]:
    """``| trial | setting | step | val_loss | val_ppl | training time |`` cells from the trial's history."""
    cells = [material.trial.name, material.trial.label]
    if material.history is None:
        return [*cells, "-", "-", "-", "-"]
    points = plot.stitch([material.history])
    losses = points.get("val_loss", {})
    if not losses:
        return [*cells, "-", "-", "-", "-"]
    step = max(losses)
    ppl = points.get("val_ppl", {}).get(step, math.exp(min(losses[step], 50.0)))
    clock = points.get(WALL_TIME_KEY, {}).get(step)
    return [*cells, str(step), f"{losses[step]:.4f}", f"{ppl:.3f}", _duration(clock)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write(
    plan: SweepPlan, materials: list[TrialMaterial], trials_table: str, folder: Path, previous: dict, device
) -> dict:
    """Write the report into ``folder`` (see the module's docstring); returns what it holds, for the log."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("curves.png", "lengths.png", "lengths.md"):
        (folder / stale).unlink(missing_ok=True)
    notes: list[str] = []
    curves = []
    for material in materials:
        if material.history is None:
            continue
        points = plot.stitch([material.history])
        if points.get("val_loss"):
            curve = plot.Curve(material.trial.name, dict(material.trial.settings), [material.history], points)
            curve.label = material.trial.values
            curves.append(curve)
    legend = ", ".join(k.key for k in plan.options.grid)
    pictures = True
    if curves:
        try:
            plot.draw(curves, folder / "curves.png", f"Sweep {plan.name}: validation curves", legend=legend)
        except ConfigError as error:  # no matplotlib: the tables still tell it all
            notes.append(f"No PNGs: {error}.")
            pictures = False
    runs, lengths, scores = score_lengths(materials, previous, device)
    if runs:
        (folder / "lengths.md").write_text(_lengths_markdown(runs, lengths))
        if pictures:
            lengths_command.draw(runs, lengths, folder / "lengths.png", legend=legend)
    (folder / SCORES_NAME).write_text(json.dumps({"sweep": plan.name, "trials": scores}, indent=2) + "\n")
    finished = sum(1 for m in materials if m.state.finished)
    readme = _readme(plan, materials, trials_table, runs, lengths, notes, finished, curves, pictures)
    (folder / "README.md").write_text(readme)
    return {"finished": finished, "curves": len(curves), "scored": len(runs)}


def _lengths_markdown(runs: list[_ScoredTrial], lengths: list[int]) -> str:
    title = "Validation perplexity of each finished trial's final checkpoint at 1, 2, 4 and 8 times its training length"
    return f"# Train short, test long\n\n{title}.\n\n{lengths_command.table(runs, lengths)}\n"


def _readme(plan, materials, trials_table, runs, lengths, notes, finished, curves, pictures) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    grid = "; ".join(f"{k.key} = {', '.join(k.values)}" for k in plan.options.grid)
    parts = [
        f"# Sweep {plan.name}",
        "",
        f"{when}: {finished} of {len(materials)} trials finished. Grid: {grid}. Written by "
        "`python -m lightning_app sweep` (see docs/sweep.md in the project); each trial's checkpoints and metric "
        "history are in its own dataset.",
        "",
        *[f"{note}" for note in notes],
        "## Trials",
        "",
        trials_table,
        "",
        "## Validation curves",
        "",
        "![validation loss and perplexity against step](curves.png)" if curves and pictures else "(none drawn)",
        "",
        "| trial | setting | step | val_loss | val_ppl | training time |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(_final_validation(m)) + " |" for m in materials],
        "",
        "## Train short, test long",
        "",
    ]
    if runs:
        parts += [lengths_command.table(runs, lengths), ""]
        parts += ["![perplexity against sequence length](lengths.png)", ""] if pictures else []
    else:
        parts += ["No trial has finished yet.", ""]
    return "\n".join(parts)


def previous_scores(folder: Path, store: CheckpointStore | None) -> dict:
    """The lengths scores of the last report: ``folder``'s ``report.json``, else the published report's."""
    text = None
    if (folder / SCORES_NAME).is_file():
        text = (folder / SCORES_NAME).read_text()
    elif store is not None:
        try:
            text = store.read_version(texts=(SCORES_NAME,)).texts.get(SCORES_NAME)
        except StoreError:
            text = None
    try:
        return dict(json.loads(text).get("trials", {})) if text else {}
    except (ValueError, AttributeError):
        return {}


def publish(folder: Path, store: CheckpointStore, notes: str) -> int | None:
    """Publish the report's folder as the report dataset's newest version; returns its number. Retried a few times;
    raises `StoreError` when it still fails."""
    version = retry_call(lambda: store.publish(folder, notes), attempts=3)
    return version.number


def discard_scratch(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
