"""The GPU a run trains on, and whether the installed torch has kernels for it.

Both are asked of child processes, never of torch in this process: `torch.cuda.get_device_capability()`
initialises CUDA, and even `torch.cuda.get_arch_list()` calls ``torch._C._cuda_getArchFlags``, whose first act
(``poison_fork``) registers torch's fork handler: from then on every process forked from this one counts as "in a
bad fork" and fails at its first CUDA call. A notebook that did either before ``fit`` could no longer start its
``ddp_notebook`` workers.

CUDA's compatibility rule decides: a GPU of compute capability (M, m) runs machine code (SASS) built for
``sm_Mm'`` with m' <= m (the same major), and PTX built for ``compute_XY`` at or below (M, m), compiled for it when
first loaded. Kaggle's image (a cu128 torch with sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120) thus runs a T4 (7.5)
and an L4 (8.9, by its sm_86 code) but not a P100 (6.0): there `torch.cuda.is_available()` is True and the first
real CUDA operation fails with "no kernel image is available for execution on the device". This module turns that
into one line before training.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_app.errors import ConfigError

log = logging.getLogger("lightning_app.gpu")

#: ``sm_86``, ``sm_120``, ``compute_90``, ``sm_90a`` (arch-specific), ``sm_100f`` (family): kind, major, minor,
#: variant. The minor is the last digit.
_CUDA_ARCH = re.compile(r"(sm|compute)_(\d+)(\d)([af]?)")
#: What the child interpreter runs: `torch.cuda.get_arch_list()` is "" for a build without CUDA.
_ARCH_LIST_SCRIPT = "import sys, torch; sys.stdout.write(' '.join(torch.cuda.get_arch_list()))"
#: The GPUs a Kaggle notebook offers to everyone, as its accelerator menu names them, and their capability.
KAGGLE_GPUS = (("GPU T4 x2", (7, 5)), ("L4", (8, 9)))
#: Accelerator names with which Lightning trains on an NVIDIA GPU when one is there.
_GPU_ACCELERATORS = ("auto", "gpu", "cuda")


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` names it.

    Attributes:
        name: e.g. ``"Tesla T4"``, ``"NVIDIA L4"``, ``"Tesla P100-PCIE-16GB"``.
        capability: the compute capability, e.g. ``(7, 5)``.
    """

    name: str
    capability: tuple[int, int]

    @property
    def sm(self) -> str:
        """``sm_75``: the capability as CUDA's architecture names write it."""
        return f"sm_{self.capability[0]}{self.capability[1]}"


def nvidia_smi(*fields: str) -> list[list[str]] | None:
    """``nvidia-smi --query-gpu=<fields>``, in a child process: one row per GPU it lists (every GPU, whatever
    ``CUDA_VISIBLE_DEVICES`` says), each the fields' values; None without ``nvidia-smi`` or an answer.

    Not torch: asking torch initialises CUDA in this process (see the module's docstring).
    """
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[value.strip() for value in line.rsplit(",", len(fields) - 1)] for line in out.splitlines() if line.strip()]


def first_gpu() -> Gpu | None:
    """The first GPU ``nvidia-smi`` lists; None without ``nvidia-smi`` or a readable answer (Kaggle's machines hold
    one model only)."""
    try:
        name, capability = (nvidia_smi("name", "compute_cap") or [])[0]
        major, minor = capability.split(".")
        return Gpu(name, (int(major), int(minor)))
    except (ValueError, IndexError):
        return None


def torch_cuda_archs(timeout: float = 120.0) -> list[str] | None:
    """The architectures the installed torch was built for (`torch.cuda.get_arch_list()`), e.g. ``["sm_75",
    "sm_86", "compute_90"]``; ``[]`` for a build without CUDA; None when the child interpreter could not tell.

    Asked of a fresh interpreter (``sys.executable``, so the same torch), never here: see the module's docstring.
    It costs one ``import torch`` (a second or two, the files being cached by this process's own import).
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ARCH_LIST_SCRIPT], capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError) as error:
        stderr = getattr(error, "stderr", None) or ""
        last = stderr.strip().splitlines()[-1:] or [str(error)]
        log.warning(f"Could not read which GPUs this torch build supports ({last[0]}): not checked")
        return None
    return done.stdout.split()


def runs_on(capability: tuple[int, int], archs: Sequence[str]) -> bool:
    """Whether a GPU of ``capability`` runs a build with ``archs``, by CUDA's compatibility rule.

    ``sm_XY`` (machine code) runs on X.y for y >= Y; ``compute_XY`` (PTX) on every capability >= X.Y; an
    arch-specific ``sm_90a`` / ``compute_90a`` only on 9.0; a family-specific ``sm_100f`` on 10.y for y >= 0.
    Names that are not CUDA architectures (a ROCm build's ``gfx90a``) are ignored.
    """
    major, minor = capability
    for arch in archs:
        match = _CUDA_ARCH.fullmatch(arch)
        if match is None:
            continue
        kind, built = match[1], (int(match[2]), int(match[3]))
        variant = match[4]
        if variant == "a":
            fits = built == capability
        elif kind == "sm" or variant == "f":
            fits = built[0] == major and built[1] <= minor
        else:
            fits = built <= capability
        if fits:
            return True
    return False


def will_use_gpu(accelerator: object) -> bool:
    """Whether ``--trainer.accelerator`` lets Lightning train on an NVIDIA GPU when one is there."""
    if isinstance(accelerator, str):
        return accelerator.lower() in _GPU_ACCELERATORS
    if accelerator is None:
        return True  # Lightning's default is "auto"
    name = str(getattr(accelerator, "class_path", None) or type(accelerator).__name__)
    return "cuda" in name.lower()  # an accelerator given as a class: CUDAAccelerator


def check_torch_supports_gpu(accelerator: object) -> Gpu | None:
    """Before training: refuse, in one line, a GPU the installed torch has no kernels for.

    Returns the GPU the run will use (None when it uses none, or there is nothing to check). Raises `ConfigError`
    when the first GPU's capability runs none of the architectures torch was built for. A build without CUDA
    architectures (CPU, ROCm) and an arch list that could not be read (one warning) are not refused.

    Under Lightning's ``ddp`` launcher the other ranks of this machine (``LOCAL_RANK`` >= 1) skip the check: the
    process that started them made it before starting them. ``CUDA_VISIBLE_DEVICES`` set to nothing (or ``-1``)
    hides every GPU from torch, which ``nvidia-smi`` does not know: no GPU then.
    """
    if not will_use_gpu(accelerator) or os.environ.get("LOCAL_RANK", "0") not in ("", "0"):
        return None
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return None
    gpu = first_gpu()
    if gpu is None:
        return None
    archs = torch_cuda_archs()
    cuda_archs = [arch for arch in archs or () if _CUDA_ARCH.fullmatch(arch)]
    if cuda_archs and not runs_on(gpu.capability, cuda_archs):
        raise ConfigError(unsupported_gpu_message(gpu, cuda_archs))
    return gpu


def unsupported_gpu_message(gpu: Gpu, archs: Sequence[str]) -> str:
    """``Tesla P100-PCIE-16GB (sm_60) is not supported by this torch build (sm_70 and newer); on Kaggle choose GPU
    T4 x2 or L4, elsewhere install a torch build with sm_60 kernels``."""
    built = sorted((int(m[2]), int(m[3])) for m in map(_CUDA_ARCH.fullmatch, archs) if m)
    if gpu.capability < built[0]:
        has = f"sm_{built[0][0]}{built[0][1]} and newer"
    else:
        has = "built for " + ", ".join(archs)
    kaggle = [name for name, capability in KAGGLE_GPUS if runs_on(capability, archs)]
    advice = f"on Kaggle choose {' or '.join(kaggle)}, elsewhere " if kaggle else ""
    return (
        f"{gpu.name} ({gpu.sm}) is not supported by this torch build ({has}); "
        f"{advice}install a torch build with {gpu.sm} kernels"
    )
