"""`python -m benchmarks.gpu_check --device cpu --quick`: every row is there, and the CPU resume rows are exact."""

from __future__ import annotations

import pytest

from benchmarks import gpu_check
from tests.benchmarks.test_benchmarks_smoke import _report

pytestmark = pytest.mark.slow


def test_gpu_check_quick_on_cpu(capsys):
    header, *rows = _report(capsys, gpu_check.main, "GPU check: CPU")
    assert header == list(gpu_check.HEADERS)
    checks = [(row[0], row[1]) for row in rows]
    assert [c for c, _ in checks] == [
        "device",
        "throughput: tiny",
        "checkpoint stall: tiny",
        "kill + resume, deterministic",
        "non-deterministic spread",
        "DDP 2 ranks kill + resume",
    ]
    resumes = {setting: row for row in rows if row[0] == "kill + resume, deterministic" for setting in [row[1]]}
    assert sorted(resumes) == ["32-true"]  # --quick: one precision (bf16-mixed: tests/end_to_end/test_exact_resume)
    for row in resumes.values():
        assert row[2] == "equal" and "max abs diff 0," in row[3] and "resumed from step 10" in row[3], row
    assert rows[4][2].startswith("resumed ") and rows[5][2] == "n/a (CPU)"
