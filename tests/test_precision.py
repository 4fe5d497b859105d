"""Precision `auto`: bf16 only where the GPU really has it (compute capability >= 8.0)."""

import pytest

from lightning_app import gpu, precision


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


@pytest.mark.parametrize(
    ("name", "capability", "expected"),
    [("Tesla T4", (7, 5), "16-mixed"), ("NVIDIA L4", (8, 9), "bf16-mixed")],
    ids=["T4", "L4"],
)
def test_a_gpu_that_passes_the_check_gets_its_precision(monkeypatch, name, capability, expected):
    """Kaggle's build (sm_86 and sm_90, no sm_89): an L4 runs it, by its sm_86 code, and trains in bf16."""
    monkeypatch.setattr(gpu, "first_gpu", lambda: gpu.Gpu(name, capability))
    monkeypatch.setattr(gpu, "torch_cuda_archs", lambda: ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100"])
    assert gpu.check_torch_supports_gpu("auto") == gpu.Gpu(name, capability)
    assert precision.resolve_precision("auto") == expected


def test_capability_comes_from_nvidia_smi_in_a_child_process(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    class Done:
        stdout = "Tesla T4, 7.5\nTesla T4, 7.5\n"

    monkeypatch.setattr(gpu.subprocess, "run", lambda *a, **k: calls.append(a[0]) or Done())
    assert precision.gpu_compute_capability() == (7, 5)
    assert calls and calls[0][0] == "nvidia-smi"
