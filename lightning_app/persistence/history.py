"""A run's metric history (its ``metrics.csv``) as it travels with the run's checkpoints.

Every version the sync publishes holds, beside ``manifest.json``, the rows the run logged before its newest
checkpoint's step, every session stitched (`rows_before`); ``fit --resume`` writes them back into the run's log
folder (`restore_history`), replacing whatever a killed session logged after that step, which the resumed run logs
again. So a run trained over many sessions keeps one whole history, and ``plot`` can draw it from the dataset.

Why "before the step": Lightning logs a step's training row with the count of optimizer steps *before* it (the row
of the step that reaches global step N says ``step N-1``), and an epoch's validation row likewise, so a checkpoint
at global step N holds exactly the training that the rows with ``step < N`` describe, and a run resumed from it
logs ``step N`` next. Pure CSV: nothing here imports Lightning or torch.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from lightning_app.atomic import write_bytes_atomically

log = logging.getLogger("lightning_app.restore")

#: The history's file name, in a log folder (``logs/lm/<run>/``) and in a published version alike.
HISTORY_NAME = "metrics.csv"
_STEP = "step"


def _parse(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a ``metrics.csv`` (empty header for an empty text)."""
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0], rows[1:]) if rows else ([], [])


def _step_of(row: list[str], column: int) -> float | None:
    try:
        return float(row[column])
    except (IndexError, ValueError):
        return None


def rows_before(text: str, step: int) -> str:
    """``text`` (a ``metrics.csv``) with only the rows whose step is below ``step``; rows with no readable step and
    a torn last line are dropped. An empty text, or one without a ``step`` column, gives an empty text."""
    header, rows = _parse(text)
    if _STEP not in header:
        return ""
    column = header.index(_STEP)
    kept = [row for row in rows if len(row) == len(header) and (s := _step_of(row, column)) is not None and s < step]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    return out.getvalue()


def count_rows(text: str) -> int:
    """How many rows (below the header) a ``metrics.csv`` holds."""
    return len(_parse(text)[1])


def read_history(path: Path) -> str | None:
    """The text of ``path``; None when it does not exist or cannot be read."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def restore_history(log_file: Path, step: int, published: str | None) -> str | None:
    """Make ``log_file`` (the run's ``metrics.csv``) the history of a run resumed at ``step``.

    The rows come from ``published`` (the history published beside the checkpoint resumed from) when there is one,
    else from ``log_file`` itself (a resume in the same working directory); either way only those before ``step``
    are kept, so the rows a killed session logged after its checkpoint are replaced by the resumed run's. Written
    atomically. Returns a few words on what was done for the log (None when there was no history to restore).
    """
    if step < 0:  # the step is not known: keep the log as it is
        return None
    local = read_history(log_file)
    source, where = (published, "the checkpoint's version") if published else (local, "this folder's log")
    if not source:
        return None
    kept = rows_before(source, step)
    if not kept:
        return None
    log_file.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(log_file, kept.encode())
    dropped = count_rows(local) - count_rows(kept) if source is local and local else 0
    later = f", {dropped} rows logged after it dropped" if dropped > 0 else ""
    return f"metric history restored from {where} into {log_file} ({count_rows(kept)} rows before step {step}{later})"
