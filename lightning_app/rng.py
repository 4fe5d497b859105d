"""The RNG states of Python, NumPy, torch and this process's CUDA device, as tensors and plain numbers.

Lightning's checkpoints hold none of them, and ``np.random.get_state()`` itself cannot be loaded with
``torch.load(weights_only=True)``: so each state is stored as tensors and ints/floats only. Under DDP every rank
draws its own numbers, so a checkpoint keeps one state per global rank (`pack_rank_states`) and each rank of the
resumed run takes its own back (`rank_state`).

The training step's dropout does not draw from the process's state but from its canonical rank's stream
(`RandomStreams`): a canonical micro-batch draws the same numbers whichever process runs it, so a run of 2
canonical ranks continues on 1 device exactly (`lightning_app.data.canonical`). The checkpoint keeps those streams
too, keyed by canonical rank (``rng_states["streams"]``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from lightning_app.data.sampler import derive_seed


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


def pack_rank_states(
    states: list[dict[str, object]], streams: Mapping[int, dict[str, torch.Tensor]] | None = None
) -> dict[str, object]:
    """The checkpoint's ``rng_states``: ``states[r]`` is global rank r's `capture_rng_state`; ``streams`` the
    canonical ranks' streams (`RandomStreams.states`), if the run has them."""
    packed: dict[str, object] = {"per_rank": dict(enumerate(states)), "world_size": len(states)}
    if streams:
        packed["streams"] = {int(k): dict(v) for k, v in sorted(streams.items())}
    return packed


def saved_streams(saved: dict[str, object]) -> dict[int, dict[str, torch.Tensor]]:
    """The canonical streams in a checkpoint's ``rng_states``.

    A checkpoint from before they were kept apart drew its dropout from each rank's own torch state, and its
    canonical ranks were its ranks: stream r is rank r's torch (and CUDA) state, so such a run goes on with the
    numbers it would have drawn.
    """
    if "streams" in saved:
        return {int(k): dict(v) for k, v in saved["streams"].items()}
    per_rank = saved.get("per_rank", {0: saved} if "torch" in saved else {})
    streams = {}
    for rank, state in per_rank.items():
        stream = {"torch": state["torch"]}
        if isinstance(state.get("cuda"), torch.Tensor):
            stream["cuda"] = state["cuda"]
        streams[int(rank)] = stream
    return streams


def _cuda_in_use() -> bool:
    # As in capture_rng_state: never initialise CUDA here (it would break `ddp_notebook` forks).
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class RandomStreams:
    """Random streams keyed by id (a canonical rank), each in torch's default generators only while its code runs.

    Dropout takes no generator argument: it draws from torch's default CPU generator (and the current CUDA
    device's). So a canonical micro-batch's forward runs inside ``drawing(c)``, which puts canonical rank c's state
    into those generators and takes the advanced state back afterwards; the process's own state is untouched.
    Swapping costs a copy of 5 KB (CPU) and 16 bytes (CUDA) per micro-batch, with no device synchronisation.

    Example::

        streams = RandomStreams()
        streams.ensure([0, 1], base_seed=1234)
        with streams.drawing(1):
            mask = torch.rand(4) < 0.9  # canonical rank 1's numbers, whichever process runs this
    """

    def __init__(self) -> None:
        #: stream id -> {"torch": CPU generator state, "cuda": this device's generator state (when CUDA is used)}.
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def load(self, states: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Take the streams of a checkpoint (`saved_streams`), replacing any of the same id."""
        self.states.update({int(k): dict(v) for k, v in states.items()})

    def ensure(self, ids: Iterable[int], base_seed: int) -> None:
        """Give every stream in ``ids`` a state: those not loaded start from their own seed, distinct per id."""
        cuda = _cuda_in_use()
        for stream in ids:
            state = self.states.setdefault(stream, {})
            seed = derive_seed(base_seed, "canonical-rank", stream)
            if "torch" not in state:
                state["torch"] = torch.Generator().manual_seed(seed).get_state()
            if cuda and "cuda" not in state:
                generator = torch.Generator(device=torch.device("cuda", torch.cuda.current_device()))
                state["cuda"] = generator.manual_seed(seed).get_state()

    @contextmanager
    def drawing(self, stream: int) -> Iterator[None]:
        """Draw from ``stream`` inside the block; the process's own state is back afterwards."""
        state = self.states[stream]
        cuda = _cuda_in_use() and "cuda" in state
        own_cpu = torch.get_rng_state()
        own_cuda = torch.cuda.get_rng_state() if cuda else None
        torch.set_rng_state(state["torch"])
        if cuda:
            torch.cuda.set_rng_state(state["cuda"])
        try:
            yield
        finally:
            advanced = {"torch": torch.get_rng_state()}
            if cuda:
                advanced["cuda"] = torch.cuda.get_rng_state()
                torch.cuda.set_rng_state(own_cuda)
            torch.set_rng_state(own_cpu)
            self.states[stream] = {**state, **advanced}


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
