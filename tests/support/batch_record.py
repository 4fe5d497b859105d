"""A test-only callback that writes down which samples each rank trains on at each optimizer step."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback


class RecordBatches(Callback):
    """Appends ``{"step", "rows"}`` per training batch to ``<folder>/rank<r>.jsonl``: the optimizer step the batch
    goes into and its input rows (token lists), in the order the rank holds them."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "rows": batch[0].tolist()}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")


def record_config(folder: Path, records: Path) -> Path:
    """A config file that adds `RecordBatches` writing into ``records``."""
    path = folder / "record.yaml"
    callback = {"class_path": "tests.support.batch_record.RecordBatches", "init_args": {"folder": str(records)}}
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    return path


def samples_per_step(records: Path, world_size: int, only_rank: int | None = None) -> dict[int, list[list[int]]]:
    """step -> the rows of every rank at that step (or of ``only_rank``), rank 0's first: a round's samples in
    canonical order. A step recorded twice (a killed session's, then the resumed one's) keeps the later record."""
    per_rank: list[dict[int, list[list[int]]]] = []
    for rank in range(world_size) if only_rank is None else (only_rank,):
        steps: dict[int, list[list[int]]] = {}
        for line in (records / f"rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            steps[record["step"]] = record["rows"]
        per_rank.append(steps)
    return {step: [row for ranks in per_rank for row in ranks[step]] for step in per_rank[0]}
