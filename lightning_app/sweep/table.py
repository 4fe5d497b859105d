"""The table of trials: setting, run id, step / total, dataset, state; printed at a sweep's start and end, and put in
its report's README."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One trial as the table shows it.

    Attributes:
        name: the trial's name.
        setting: its grid values (``model.pe_type=rope``).
        run_id: the run id of its newest checkpoint ("" before it began).
        step: the newest checkpoint's step.
        total: the step its schedule ends at (None: not known yet).
        dataset: where it publishes and what is there (``alice/rope-...`` ``v4``), or ``-``.
        state: ``finished``, ``in progress``, ``not started``, what happened in this session...
    """

    name: str
    setting: str
    run_id: str
    step: int
    total: int | None
    dataset: str
    state: str


HEADER = ("trial", "setting", "run id", "step / total", "dataset", "state")


def markdown(rows: Sequence[Row]) -> str:
    """The rows as a markdown table (it reads as well in a terminal as in a README)."""
    cells = [
        (r.name, r.setting, r.run_id or "-", f"{r.step} / {r.total if r.total else '?'}", r.dataset, r.state)
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [HEADER, *cells]) for i in range(len(HEADER))]

    def line(values) -> str:
        return "| " + " | ".join(str(v).ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
