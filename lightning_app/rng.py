"""The RNG states of Python, NumPy, torch and every CUDA device, as tensors and plain numbers.

Lightning's checkpoints hold none of them, and ``np.random.get_state()`` itself cannot be loaded with
``torch.load(weights_only=True)``: so each state is stored as tensors and ints/floats only.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng_state() -> dict[str, object]:
    """Everything a resumed run needs to draw the same random numbers as an uninterrupted one."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, object] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    # Only where CUDA is already in use: initialising it here would break `ddp_notebook` forks.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, object]) -> None:
    """Put back what `capture_rng_state` took; parts missing from an older checkpoint are left alone."""
    if py := state.get("python"):
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if npy := state.get("numpy"):
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    if (cpu := state.get("torch")) is not None:
        torch.set_rng_state(cpu)
    cuda = state.get("cuda")
    # Only meaningful on as many devices as when it was saved.
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
