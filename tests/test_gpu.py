"""The GPU check: a GPU the installed torch has no kernels for is refused in one line, before training."""

from __future__ import annotations

import logging
import textwrap

import pytest
import torch

from lightning_app import gpu
from lightning_app.errors import ConfigError
from tests.cli_helpers import cli_env, fit_args, run

#: Kaggle's cu128 image (Kaggle/docker-python#1546): no sm_60, no sm_89.
KAGGLE_BUILD = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
P100 = gpu.Gpu("Tesla P100-PCIE-16GB", (6, 0))
P100_REFUSED = (
    "Tesla P100-PCIE-16GB (sm_60) is not supported by this torch build (sm_70 and newer); "
    "on Kaggle choose GPU T4 x2 or L4, elsewhere install a torch build with sm_60 kernels"
)


@pytest.mark.parametrize(
    ("capability", "archs", "runs"),
    [
        ((7, 5), KAGGLE_BUILD, True),  # T4: its own sm_75
        ((8, 9), ["sm_86", "sm_90"], True),  # L4: sm_86 code runs on 8.9 (same major, lower minor)
        ((8, 9), ["sm_90"], False),  # a higher minor or major never runs as machine code
        ((6, 0), KAGGLE_BUILD, False),  # P100
        ((6, 1), ["sm_60"], True),
        ((8, 0), ["sm_75"], False),  # machine code of another major does not run, even an older one
        ((8, 9), ["sm_75", "compute_75"], True),  # PTX: compiled for any capability at or above its own
        ((12, 0), ["sm_90", "compute_90"], True),
        ((8, 6), ["compute_90"], False),  # PTX above the GPU
        ((9, 0), ["sm_90a"], True),  # arch-specific: that capability only
        ((10, 0), ["sm_90a", "compute_90a"], False),
        ((10, 3), ["sm_100f"], True),  # family-specific: 10.x
        ((7, 5), ["gfx90a", "gfx942"], False),  # not CUDA architectures
        ((7, 5), [], False),
    ],
)
def test_cuda_compatibility_rule(capability, archs, runs):
    assert gpu.runs_on(capability, archs) is runs


def _fake_gpu(monkeypatch, found: gpu.Gpu | None, archs: list[str] | None) -> list[str]:
    """``first_gpu`` and ``torch_cuda_archs`` answer as given; returns the names of the calls made."""
    calls: list[str] = []
    monkeypatch.setattr(gpu, "first_gpu", lambda: calls.append("nvidia-smi") or found)
    monkeypatch.setattr(gpu, "torch_cuda_archs", lambda: calls.append("arch list") or archs)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return calls


def test_a_p100_is_refused_in_one_line(monkeypatch):
    _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    with pytest.raises(ConfigError) as refused:
        gpu.check_torch_supports_gpu("auto")
    assert str(refused.value) == P100_REFUSED
    assert "\n" not in str(refused.value)


def test_the_message_says_what_the_build_has_when_the_gpu_is_newer():
    message = gpu.unsupported_gpu_message(gpu.Gpu("NVIDIA B200", (10, 0)), ["sm_90"])
    assert message == (
        "NVIDIA B200 (sm_100) is not supported by this torch build (built for sm_90); "
        "install a torch build with sm_100 kernels"  # neither Kaggle GPU runs this build either
    )
    message = gpu.unsupported_gpu_message(gpu.Gpu("NVIDIA B200", (10, 0)), ["sm_75", "sm_80"])
    assert message.endswith(
        "(built for sm_75, sm_80); on Kaggle choose GPU T4 x2 or L4, elsewhere install a torch "
        "build with sm_100 kernels"
    )


@pytest.mark.parametrize("accelerator", ["cpu", "mps", "tpu"])
def test_no_gpu_run_asks_nothing(monkeypatch, accelerator):
    calls = _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    assert gpu.check_torch_supports_gpu(accelerator) is None
    assert calls == []


@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda", "GPU", None])
def test_every_gpu_accelerator_is_checked(monkeypatch, accelerator):
    _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    with pytest.raises(ConfigError):
        gpu.check_torch_supports_gpu(accelerator)


def test_an_accelerator_given_as_a_class_is_checked(monkeypatch):
    from types import SimpleNamespace

    _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    with pytest.raises(ConfigError):
        gpu.check_torch_supports_gpu(SimpleNamespace(class_path="lightning.pytorch.accelerators.CUDAAccelerator"))


@pytest.mark.parametrize(
    "archs",
    [[], ["gfx90a"], None],
    ids=["cpu-build: nothing to check", "rocm-build: not CUDA", "arch list unreadable"],
)
def test_nothing_to_compare_is_not_refused(monkeypatch, archs):
    _fake_gpu(monkeypatch, P100, archs)
    assert gpu.check_torch_supports_gpu("auto") == P100


def test_without_a_gpu_the_arch_list_is_not_asked(monkeypatch):
    calls = _fake_gpu(monkeypatch, None, KAGGLE_BUILD)
    assert gpu.check_torch_supports_gpu("auto") is None
    assert calls == ["nvidia-smi"]


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_gpus_hidden_from_torch_are_not_checked(monkeypatch, hidden):
    calls = _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert gpu.check_torch_supports_gpu("auto") is None
    assert calls == []


def test_ranks_started_by_the_ddp_launcher_do_not_check_again(monkeypatch):
    calls = _fake_gpu(monkeypatch, P100, KAGGLE_BUILD)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert gpu.check_torch_supports_gpu("auto") is None
    assert calls == []


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("Tesla P100-PCIE-16GB, 6.0\n", P100),
        ("NVIDIA L4, 8.9\nNVIDIA L4, 8.9\n", gpu.Gpu("NVIDIA L4", (8, 9))),
        ("Tesla T4, [N/A]\n", None),
        ("", None),
    ],
)
def test_nvidia_smi_answers(monkeypatch, stdout, expected):
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    class Done:
        pass

    Done.stdout = stdout
    monkeypatch.setattr(gpu.subprocess, "run", lambda *a, **k: Done())
    assert gpu.first_gpu() == expected


def test_the_arch_list_is_read_in_another_interpreter(monkeypatch):
    """In this process `get_arch_list` would register torch's fork handler: here it cannot even be called."""

    def poisoned():
        raise AssertionError("torch.cuda.get_arch_list() called in the training process")

    monkeypatch.setattr(torch.cuda, "get_arch_list", poisoned)
    archs = gpu.torch_cuda_archs()
    assert isinstance(archs, list)
    if torch.version.cuda is None:
        assert archs == []  # the CPU build has none


def test_an_arch_list_that_cannot_be_read_is_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(gpu, "_ARCH_LIST_SCRIPT", "raise SystemExit('no torch here')")
    with caplog.at_level(logging.WARNING, logger="lightning_app.gpu"):
        assert gpu.torch_cuda_archs() is None
    assert [r.getMessage() for r in caplog.records] == [
        "Could not read which GPUs this torch build supports (no torch here): not checked"
    ]


def test_the_cli_refuses_a_p100_before_training(tmp_path):
    """The real CLI, with an ``nvidia-smi`` on PATH that reports a P100 and a ``sitecustomize`` that gives the
    interpreters it starts Kaggle's arch list: what a user could set up too, no hook in the code."""
    bin_dir, site_dir = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir()
    site_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "Tesla P100-PCIE-16GB, 6.0"\n')
    smi.chmod(0o755)
    (site_dir / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""\
            import torch.cuda

            torch.cuda.get_arch_list = lambda: {KAGGLE_BUILD!r}
            """
        )
    )
    env = cli_env(tmp_path / "home", {"PYTHONPATH": str(site_dir)})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    for name in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK"):
        env.pop(name, None)
    result = run(fit_args("--trainer.accelerator", "gpu"), tmp_path, env, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"error: {P100_REFUSED}", lines
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()
