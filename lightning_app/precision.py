"""Precision ``auto``: bf16 where the GPU really has it, fp16 on older GPUs (T4), fp32 on CPU."""

from __future__ import annotations

from lightning_app import gpu


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability, asked of ``nvidia-smi`` in a child process (`lightning_app.gpu`).

    Not `torch.cuda.get_device_capability()`: it initialises CUDA in this process, and a notebook process
    that touched CUDA before ``fit`` can no longer fork its ``ddp_notebook`` workers.
    """
    first = gpu.first_gpu()
    return None if first is None else first.capability


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
