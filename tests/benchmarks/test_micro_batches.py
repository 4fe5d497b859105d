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


def test_a_global_batch_and_steps_of_ones_own(capsys):
    micro_batches.main(["--quick", "--device", "cpu", "--threads", "1", "--batch", "4", "--steps", "2"])
    header, *rows = _table(capsys.readouterr().out)
    (row,) = [dict(zip(header, r)) for r in rows]
    assert row["global batch x seq"] == "4x32" and row["timed steps (+warm-up)"] == "2 (+2)"


@pytest.mark.parametrize("flag, value", [("--batch", "3"), ("--batch", "0"), ("--steps", "0")])
def test_a_batch_that_cannot_be_split_in_two_or_no_steps_is_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        micro_batches.main(["--quick", "--device", "cpu", flag, value])
    assert exited.value.code == 2
    assert f"{flag}: got {value}" in capsys.readouterr().err
