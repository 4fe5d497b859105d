"""``StatefulDataLoader`` that resumes even when ``--data.num_workers`` changed between sessions.

torchdata saves a loader's state in one of two layouts, one for ``num_workers == 0`` and one for worker
processes (which also records the worker count), and asserts on a mismatch: a session that resumes with another
``num_workers`` would crash in ``load_state_dict``. All that matters for our map-style datasets is the
sampler's place, which both layouts hold, so on a mismatch :class:`ResumableDataLoader` restores the
:class:`ResumableSampler` alone and lets the loader start a fresh iterator from there. On a match it defers to
torchdata unchanged. The layouts read here are torchdata 0.11's (``tests/data/test_sampler.py`` checks them); an
unknown layout is handed to torchdata as it is.
"""

from __future__ import annotations

import warnings
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader
from typing_extensions import override

from lightning_app.data.sampler import ResumableSampler

# torchdata 0.11 state keys (stateful_dataloader.py, sampler.py).
_SNAPSHOT = "_snapshot"
_MAIN_SNAPSHOT = "_main_snapshot"
_NUM_WORKERS = "_num_workers"
_STEPS_SINCE_SNAPSHOT = "_steps_since_snapshot"
_SAMPLER_ITER_STATE = "_sampler_iter_state"
_SAMPLER_STATE = "sampler_state"
_SINGLE_PROCESS_MARK = "_num_yielded"


class ResumableDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over a :class:`ResumableSampler` whose state loads under any ``num_workers``.

    Takes the same arguments as ``torchdata.stateful_dataloader.StatefulDataLoader``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # torchdata 0.11 calls the deprecated torch.set_vital in every constructor; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*set_vital.*deprecated", category=UserWarning)
            super().__init__(*args, **kwargs)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the place in the epoch saved by :meth:`state_dict`, whatever ``num_workers`` saved it.

        Args:
            state_dict: a state saved by a ``StatefulDataLoader`` over the same data and batch size.
        """
        saved_workers = _saved_num_workers(state_dict)
        if saved_workers is None or saved_workers == self.num_workers or not isinstance(self.sampler, ResumableSampler):
            super().load_state_dict(state_dict)
            return
        sampler_state = _consumed_sampler_state(state_dict, self.sampler, self.batch_size or 1)
        if sampler_state is None:
            super().load_state_dict(state_dict)
            return
        super().load_state_dict({})  # drop any iterator: the next one is built fresh ...
        self.sampler.load_state_dict(sampler_state)  # ... and starts where the saved one stopped


def _saved_num_workers(state_dict: dict[str, Any]) -> int | None:
    """How many workers the saved loader had; None for an empty or unknown layout."""
    if not state_dict:
        return None
    if _SNAPSHOT in state_dict:
        main = state_dict[_SNAPSHOT].get(_MAIN_SNAPSHOT, {})
        return main.get(_NUM_WORKERS)
    return 0 if _SINGLE_PROCESS_MARK in state_dict else None


def _consumed_sampler_state(
    state_dict: dict[str, Any], sampler: ResumableSampler, batch_size: int
) -> dict[str, int] | None:
    """The sampler state right after the last batch the saved loader handed out."""
    if _SNAPSHOT in state_dict:
        # The snapshot was taken at some batch; the batches yielded since then each drew batch_size indices.
        sampler_iter_state = state_dict[_SNAPSHOT][_MAIN_SNAPSHOT].get(_SAMPLER_ITER_STATE) or {}
        since = int(state_dict.get(_STEPS_SINCE_SNAPSHOT, 0))
    else:
        sampler_iter_state = state_dict.get(_SAMPLER_ITER_STATE) or {}
        since = 0
    sampler_state = sampler_iter_state.get(_SAMPLER_STATE)
    if sampler_state is None:
        return None
    return sampler.state_after(sampler_state, since, batch_size)


def consumed_position(combined_loader_state: Any) -> int | None:
    """The sampler position in Lightning's saved ``combined_loader`` state (a list with one loader's state): the
    indices of each canonical shard consumed in the saved epoch; None where it holds no sampler state."""
    if not combined_loader_state or not isinstance(combined_loader_state, list):
        return None
    state = combined_loader_state[0] or {}
    if _SNAPSHOT in state:
        sampler_iter_state = state[_SNAPSHOT].get(_MAIN_SNAPSHOT, {}).get(_SAMPLER_ITER_STATE) or {}
    else:
        sampler_iter_state = state.get(_SAMPLER_ITER_STATE) or {}
    sampler_state = sampler_iter_state.get(_SAMPLER_STATE)
    return None if sampler_state is None else int(sampler_state["position"])
