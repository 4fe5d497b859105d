"""Precision ``auto``: bf16 where the GPU really has it, fp16 on older GPUs (T4), fp32 on CPU."""

from __future__ import annotations

import shutil
import subprocess


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability, asked of ``nvidia-smi`` in a child process.

    Not `torch.cuda.get_device_capability()`: it initialises CUDA in this process, and a notebook process
    that touched CUDA before ``fit`` can no longer fork its ``ddp_notebook`` workers.
    """
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        major, minor = out[0].split(".")
        return int(major), int(minor)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def resolve_precision(accelerator: str | None) -> str:
    """``bf16-mixed`` on compute capability >= 8.0, ``16-mixed`` on older GPUs, ``32-true`` on CPU.

    `torch.cuda.is_bf16_supported()` is not enough: it says True on a T4 (7.5), through slow emulation.
    """
    if accelerator == "cpu":
        return "32-true"
    capability = gpu_compute_capability()
    if capability is None:
        return "32-true"
    return "bf16-mixed" if capability >= (8, 0) else "16-mixed"
