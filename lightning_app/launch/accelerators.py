"""The accelerators a launched chain may ask Kaggle for (``--accelerator``), and what each one is.

The names are Kaggle's ``machine_shape`` strings, which the client sends unchecked. The list is taken from
kaggle-cli's ``docs/kernels.md`` ("Accelerators available as of Sep 2026", as corrected by kaggle-cli PR #1198:
``NvidiaTeslaT4`` is GPU T4 x2, the default GPU; a single T4 is not offered) and kaggle 2.2.5's own help for
``kernels push --accelerator``. This project trains on NVIDIA GPUs or the CPU: the TPUs of that list are left out,
and so is ``NvidiaTeslaT4Highmem`` (an internal pool, removed from the docs). ``NvidiaTeslaP100`` is retired: the
torch of Kaggle's image has no kernels for it (see ``lightning_app/gpu.py``).
"""

from __future__ import annotations

from lightning_app.errors import ConfigError, bad_value

#: ``--accelerator`` value -> what it is. The last four are offered only to some competitions' participants.
ACCELERATORS = {
    "NvidiaTeslaT4": "GPU T4 x2 (Kaggle's default GPU)",
    "NvidiaL4": "GPU L4 (bf16)",
    "NvidiaL4X1": "GPU L4 x1",
    "NvidiaTeslaA100": "GPU A100 (some competitions only)",
    "NvidiaH100": "GPU H100 (some competitions only)",
    "NvidiaRtxPro6000": "GPU RTX Pro 6000 (some competitions only)",
    "none": "CPU only (no GPU quota used)",
}
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"
#: Retired names, and the line that refuses each.
RETIRED = {
    "nvidiateslap100": (
        "a Tesla P100 (sm_60) is not supported by the torch build of Kaggle's image (sm_70 and newer); "
        "choose NvidiaTeslaT4 (GPU T4 x2) or NvidiaL4"
    ),
}


def machine_shape(name: str) -> str | None:
    """Kaggle's ``machine_shape`` for ``--accelerator name`` (None: the CPU); a `ConfigError` for any other name."""
    if name.lower() in RETIRED:
        raise ConfigError(f"--accelerator: got {name!r}; {RETIRED[name.lower()]}")
    if name not in ACCELERATORS:
        raise bad_value("--accelerator", name, ACCELERATORS)
    return None if name == "none" else name


def uses_gpu(shape: str | None) -> bool:
    """Whether a session on ``shape`` spends the weekly GPU quota."""
    return bool(shape) and shape.startswith("Nvidia")
