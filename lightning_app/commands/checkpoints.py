"""``python -m lightning_app checkpoints``: what ``--resume`` would see, as a table, and which one it would take."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from lightning_app.commands import CommandParser, one_line_errors
from lightning_app.persistence.folder import Candidate, verify
from lightning_app.persistence.restore import (
    RestoreOptions,
    ResumeBlocked,
    blocked_line,
    collect,
    newest_first,
    run_label,
)
from lightning_app.persistence.sync_target import StoreOptions, make_store


def _when(timestamp: str) -> str:
    try:
        return datetime.strptime(timestamp[:15], "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return timestamp


def _verified(candidate: Candidate) -> str:
    if candidate.verified is None and candidate.source != "remote":  # a remote one is not downloaded to list it
        candidate.verified = verify(candidate) is None
    return {True: "yes", False: "NO", None: "-"}[candidate.verified]


def render(candidates: list[Candidate], chosen: Candidate | None) -> str:
    """A plain-text table, newest first; ``*`` marks the one ``--resume`` would take."""
    header = ("", "run", "source", "file", "epoch", "step", "time (UTC)", "size", "val_loss", "verified")
    rows = [header]
    for c in newest_first(candidates):
        val_loss = c.entry.metrics.get("val_loss")
        size = c.path.stat().st_size if c.path.is_file() else c.entry.size
        rows.append(
            (
                "*" if c is chosen else "",
                c.entry.run_id or "-",
                c.source,
                c.path.name,
                str(c.entry.epoch),
                str(c.entry.global_step),
                _when(c.entry.timestamp),
                f"{size / 1e6:.1f} MB",
                f"{val_loss:.4f}" if val_loss is not None else "-",
                _verified(c),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m lightning_app checkpoints",
        description="List the checkpoints that `fit --resume` would consider, newest first.",
    )
    parser.add_argument("--dirpath", default="checkpoints", help="the local checkpoint folder (--checkpoint.dirpath)")
    parser.add_argument("--input_dir", help="attached datasets (--restore.input_dir; default: Kaggle's /kaggle/input)")
    parser.add_argument("--dataset", help="OWNER/SLUG of the sync dataset: also list its newest version")
    parser.add_argument("--version", type=int, help="with --dataset: this version instead of the newest")
    parser.add_argument("--directory", help="a directory store (--sync.directory) instead of Kaggle")
    parser.add_argument("--run", help="the run --resume should continue (--restore.run)")
    parser.add_argument("--timeout", default="00:05:00", help="how long the dataset is read for (--restore.timeout)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    remote = args.dataset or args.directory
    store = make_store(StoreOptions(dataset=args.dataset, directory=args.directory), "") if remote else None
    if store is not None and store.store is None and store.error is None:
        print(f"note: {remote} is not read: {store.why_none}", file=sys.stderr)
    options = RestoreOptions(args.input_dir, bool(remote), args.version, args.run, timeout=args.timeout)
    download_dir = Path(tempfile.mkdtemp(prefix="lightning-app-checkpoints-"))
    try:
        inventory = collect(Path(args.dirpath), options, store, download_dir)
        if inventory.remote is not None and inventory.remote.unreadable is not None:
            raise ResumeBlocked(blocked_line(inventory.remote))
        if not inventory.candidates:
            print(f"No checkpoints found in {args.dirpath} or {options.inputs}: `fit --resume` would start fresh.")
            return 0
        print(render(inventory.candidates, inventory.chosen))
        if inventory.chosen is None:
            print("\nNo checkpoint verifies: `fit --resume` would start fresh.")
        else:
            chosen = inventory.chosen
            print(f"\n* `fit --resume` would continue {run_label(chosen.entry.run_id)} from {chosen.describe()}")
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
