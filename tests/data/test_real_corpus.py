"""`TextDataModule` end to end on a real English corpus that ships with Python (`lightning_app.data.corpus`)."""

from __future__ import annotations

import csv
import math

import pytest

from lightning_app.data.corpus import write_corpus
from tests.cli_helpers import cli_env, fit_args, run

pytestmark = pytest.mark.slow


def test_a_tiny_model_learns_real_english_bytes(tmp_path):
    corpus = write_corpus(tmp_path / "data" / "python_docs.txt")
    assert corpus.stat().st_size > 300_000 and "statement" in corpus.read_text()
    args = fit_args(
        "--data", "TextDataModule", "--data.path", str(corpus), "--data.seq_len", "64", "--data.batch_size", "16",
        "--data.num_workers", "0", "--trainer.max_steps", "80", "--trainer.val_check_interval", "40",
        "--trainer.limit_val_batches", "8", "--model.warmup_steps", "10",
    )  # fmt: skip
    result = run(args, tmp_path, cli_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = []
    for path in (tmp_path / "logs").rglob("metrics.csv"):
        with open(path, newline="") as f:
            losses += [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
    assert len(losses) >= 2
    # Uniform over 256 bytes is 5.55 nats; English text is far more predictable, and the loss keeps falling.
    assert losses[-1] < 0.7 * math.log(256) and losses[-1] < losses[0]
