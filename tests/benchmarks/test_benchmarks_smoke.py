"""Each benchmark runs in ``--quick`` mode and prints its table: a test that the commands work, not of any timing."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks import checkpoint_stall, collectives, restore_time, sweep_parallel, throughput, upload_volume
from benchmarks.common import markdown_table
from tests.cli_helpers import REPO

RATIO = re.compile(r"\d+\.\d+x?")


def _table(out: str) -> list[list[str]]:
    """The markdown table's rows (header first, rule left out), as lists of stripped cells."""
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, out
    return [[cell.strip() for cell in row.strip("|").split("|")] for i, row in enumerate(rows) if i != 1]


def _report(capsys, main, title: str, returned: list | None = None) -> list[list[str]]:
    result = main(["--quick", "--device", "cpu"])
    if returned is not None:
        returned.append(result)
    out = capsys.readouterr().out
    assert f"### {title}" in out and "Machine: " in out and "--quick" in out
    return _table(out)


def test_throughput_quick(capsys):
    header, *rows = _report(capsys, throughput.main, "Throughput")
    row = dict(zip(header, rows[0]))
    assert row["model"] == "tiny" and float(row["plain loop tok/s"].replace(",", "")) > 0
    assert RATIO.match(row["fit / plain (range)"]) and RATIO.match(row["fit + saves / plain (range)"])


def test_checkpoint_stall_quick(capsys):
    returned: list = []
    header, *rows = _report(capsys, checkpoint_stall.main, "Checkpoint stall", returned)
    assert [r[0] for r in rows] == ["host copy (bare)", "project: KaggleModelCheckpoint", "stock: ModelCheckpoint"]
    for row in rows:
        assert RATIO.fullmatch(dict(zip(header, row))["vs host copy"])
    # What was measured, not its rounding: a tiny model's copy can print as 0.000 s on a quiet machine.
    (records,) = returned
    for arm, saves in records.items():
        assert saves.blocked and all(seconds > 0 for seconds in saves.blocked), arm
        assert saves.after_save and saves.steps and all(seconds > 0 for seconds in saves.after_save + saves.steps)
    assert records["project"].background and all(seconds > 0 for seconds in records["project"].background)


@pytest.mark.slow
def test_upload_volume_quick(capsys):
    header, *rows = _report(capsys, upload_volume.main, "Upload volume")
    versions = [dict(zip(header, r)) for r in rows if r[0] != "total"]
    assert [v["version"] for v in versions] == ["1", "2", "3"]
    project = [float(v["project MB sent"]) for v in versions]
    seed = [float(v["seed MB sent"]) for v in versions]
    assert max(project) == pytest.approx(min(project), rel=0.05)  # flat
    assert seed[2] == pytest.approx(3 * seed[0], rel=0.05)  # the whole folder, one more checkpoint each time


@pytest.mark.slow
def test_restore_time_quick(capsys):
    returned: list = []
    header, *rows = _report(capsys, restore_time.main, "Restore time", returned)
    resumes = [dict(zip(header, row)) for row in rows[:3]]
    assert [r["arm"] for r in resumes] == [
        "fit --resume (attached input)",
        "fit --resume (API, file as it is)",
        "fit --resume (API, file wrapped in a zip)",
    ]
    for row in resumes:
        assert RATIO.match(row["vs fresh + copy"]) and RATIO.match(row["peak extra disk"]), row
    # What was measured: every resume left the checkpoint in its folder (the benchmark also checks that each one
    # said it resumed from it), the fresh start did not; the download as it is never held a second copy at the end.
    (results,) = returned
    size = results.checkpoint_bytes
    assert all(share >= 1.0 for arm in ("resume", "api", "api-wrapped") for share in results.disk[arm])
    assert max(results.disk["fresh"]) < 0.5 and max(results.disk["api"]) < 1.5
    as_is, wrapped = results.product
    assert not as_is.wrapped and as_is.peak_bytes == size and as_is.outside_bytes >= size
    assert wrapped.wrapped and wrapped.peak_bytes > 1.5 * size and wrapped.outside_bytes >= size


# sweep_parallel's --quick starts three sweeps of two fresh trials each (a minute): tested in tests/sweep/ instead.
@pytest.mark.parametrize(
    "module", [throughput, checkpoint_stall, upload_volume, restore_time, collectives, sweep_parallel]
)
def test_each_command_has_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "--quick" in capsys.readouterr().out


def test_a_command_starts_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.collectives", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--quick" in done.stdout, done.stderr


def test_markdown_table_aligns_numbers_right():
    table = markdown_table(["name", "value"], [["a", "1.5"], ["bb", "10.25x"]])
    assert table.splitlines() == ["| name |  value |", "|------|-------:|", "| a    |    1.5 |", "| bb   | 10.25x |"]
