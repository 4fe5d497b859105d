"""The RNG states of Python, NumPy, torch and this process's CUDA device, as tensors and plain numbers.

Lightning's checkpoints hold none of them, and ``np.random.get_state()`` itself cannot be loaded with
``torch.load(weights_only=True)``: so each state is stored as tensors and ints/floats only. Under DDP every rank
draws its own numbers, so a checkpoint keeps one state per global rank (`pack_rank_states`) and each rank of the
resumed run takes its own back (`rank_state`).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng_state() -> dict[str, object]:
    """Everything this process needs to draw the same random numbers as an uninterrupted run would."""
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
    # Only this process's own device, and only where CUDA is already in use: initialising it here would break
    # `ddp_notebook` forks.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
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
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, torch.Tensor):  # this process's device
        torch.cuda.set_rng_state(cuda)
    elif len(cuda) == torch.cuda.device_count():  # older checkpoints: every device, as seen from rank 0
        torch.cuda.set_rng_state_all(cuda)


def pack_rank_states(states: list[dict[str, object]]) -> dict[str, object]:
    """The checkpoint's ``rng_states``: ``states[r]`` is global rank r's `capture_rng_state`."""
    return {"per_rank": dict(enumerate(states)), "world_size": len(states)}


def rank_state(saved: dict[str, object], rank: int) -> dict[str, object] | None:
    """Global rank ``rank``'s state in a checkpoint's ``rng_states``, or None when it has none.

    A checkpoint from before states were kept per rank holds one flat state: rank 0's.
    """
    per_rank = saved.get("per_rank")
    if per_rank is None:
        return saved if rank == 0 else None
    return per_rank.get(rank)


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(map(str, ranks))


def unmatched_ranks_message(saved: dict[str, object], world_size: int) -> str | None:
    """One line on the ranks that do not match between the checkpoint and a ``world_size`` run; None if all do."""
    saved_ranks = sorted(saved["per_rank"]) if "per_rank" in saved else [0]
    missing = [r for r in range(world_size) if r not in saved_ranks]
    unused = [r for r in saved_ranks if r >= world_size]
    if not missing and not unused:
        return None
    parts = []
    if missing:
        one = len(missing) == 1
        parts.append(f"{_ranks(missing)} {'starts from its seed' if one else 'start from their seeds'}")
    if unused:
        parts.append(f"the state of {_ranks(unused)} is not used")
    return f"RNG state: checkpoint has {_ranks(saved_ranks)}, this run has {world_size}: " + "; ".join(parts)
