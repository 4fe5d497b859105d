"""`python -m benchmarks.micro_batches --quick`: both arms run and the table holds their ratio (not a timing test)."""

from __future__ import annotations

import re

import pytest

from benchmarks import micro_batches
from tests.benchmarks.test_benchmarks_smoke import _table

pytestmark = pytest.mark.slow


def test_micro_batches_quick(capsys):
    micro_batches.main(["--quick", "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr().out
    assert "### Canonical micro-batches" in out and "Command: `python -m benchmarks.micro_batches --quick" in out
    header, *rows = _table(out)
    assert header == list(micro_batches.HEADERS)
    (row,) = [dict(zip(header, r)) for r in rows]
    assert row["model"] == "tiny" and row["global batch x seq"] == "8x32"
    assert float(row["one forward tok/s"].replace(",", "")) > 0 < float(row["2 micro-batches tok/s"].replace(",", ""))
    assert re.fullmatch(r"\d+\.\d{3} \(\d+\.\d{3}-\d+\.\d{3}\)", row["2 micro-batches / one forward (range)"])
