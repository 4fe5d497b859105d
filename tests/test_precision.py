"""Precision `auto`: bf16 only where the GPU really has it (compute capability >= 8.0)."""

import pytest

from lightning_app import precision


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 5), "16-mixed"), ((6, 0), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed"), (None, "32-true")],
    ids=["T4", "P100", "A100", "H100", "no-gpu"],
)
def test_auto_precision_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: capability)
    assert precision.resolve_precision("auto") == expected


def test_cpu_accelerator_is_always_fp32(monkeypatch):
    monkeypatch.setattr(precision, "gpu_compute_capability", lambda: (9, 0))
    assert precision.resolve_precision("cpu") == "32-true"


def test_capability_is_read_without_initialising_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(precision.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    class Done:
        stdout = "7.5\n7.5\n"

    monkeypatch.setattr(precision.subprocess, "run", lambda *a, **k: calls.append(a[0]) or Done())
    assert precision.gpu_compute_capability() == (7, 5)
    assert calls and calls[0][0] == "nvidia-smi"
