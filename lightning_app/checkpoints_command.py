"""``python -m lightning_app checkpoints``: what ``--resume`` would see, as a table, and which one it would take."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from lightning_app.errors import ConfigError
from lightning_app.persistence.candidates import Candidate, newest_first, run_label, verify
from lightning_app.persistence.restore import RestoreOptions, collect


def _when(timestamp: str) -> str:
    try:
        return datetime.strptime(timestamp[:15], "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return timestamp


def render(candidates: list[Candidate], chosen: Candidate | None) -> str:
    """A plain-text table, newest first; ``*`` marks the one ``--resume`` would take."""
    header = ("", "run", "source", "file", "epoch", "step", "time (UTC)", "size", "val_loss", "verified")
    rows = [header]
    for c in newest_first(candidates):
        if c.verified is None:
            c.verified = verify(c) is None
        val_loss = c.entry.metrics.get("val_loss")
        rows.append(
            (
                "*" if c is chosen else "",
                c.entry.run_id or "-",
                c.source,
                c.path.name,
                str(c.entry.epoch),
                str(c.entry.global_step),
                _when(c.entry.timestamp),
                f"{c.path.stat().st_size / 1e6:.1f} MB",
                f"{val_loss:.4f}" if val_loss is not None else "-",
                "yes" if c.verified else "NO",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_app checkpoints",
        description="List the checkpoints that `fit --resume` would consider, newest first.",
    )
    parser.add_argument("--dirpath", default="checkpoints", help="the local checkpoint folder (--checkpoint.dirpath)")
    parser.add_argument("--input_dir", default=RestoreOptions.input_dir, help="attached datasets (--restore.input_dir)")
    parser.add_argument("--dataset", help="OWNER/SLUG of the sync dataset: also list its newest version (downloads it)")
    parser.add_argument("--version", type=int, help="with --dataset: this version instead of the newest")
    parser.add_argument("--directory", help="a directory store (--sync.directory) instead of Kaggle")
    parser.add_argument("--run", help="the run --resume should continue (--restore.run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    store = None
    if args.directory:
        from lightning_app.persistence.directory_store import DirectoryStore

        store = DirectoryStore(Path(args.directory))
    elif args.dataset:
        from lightning_app.persistence.kaggle_store import KaggleDatasetStore

        store = KaggleDatasetStore(args.dataset)
    options = RestoreOptions(input_dir=args.input_dir, download=store is not None, version=args.version, run=args.run)
    download_dir = Path(tempfile.mkdtemp(prefix="lightning-app-checkpoints-"))
    try:
        try:
            inventory = collect(Path(args.dirpath), options, store, download_dir)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if not inventory.candidates:
            print(f"No checkpoints found in {args.dirpath} or {args.input_dir}: `fit --resume` would start fresh.")
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
    sys.exit(main(sys.argv[1:]))
