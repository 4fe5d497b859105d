"""A sampler whose order is a pure function of (seed, epoch) and whose place in the epoch can be saved.

How a mid-epoch resume finds its place
--------------------------------------
We rely on the **stateful sampler**, not on torchdata's fast-forward. torchdata's ``StatefulDataLoader`` wraps
the sampler in its own ``BatchSampler``; the iterator of that wrapper saves ``sampler.state_dict()`` and, on
restore, calls ``sampler.load_state_dict(...)`` and then ``iter(sampler)``. It falls back to fast-forwarding
(drawing and dropping ``samples_yielded`` indices from a fresh iterator) only when neither the sampler nor its
iterator is stateful, and a fresh iterator of an ordinary shuffling sampler would draw a different permutation,
so the replay would be wrong. Ours restores in O(1): the permutation is rebuilt from (seed, epoch) and
iteration starts at the saved ``position``.

Prefetching workers: with ``num_workers > 0`` the main process draws indices ahead of the batches the trainer
has consumed, so the sampler's live position runs ahead. ``StatefulDataLoader`` (``snapshot_every_n_steps=1``,
the default) records the main-process state, sampler included, at the moment each batch's indices are sent to
a worker, and when that batch is yielded it promotes the record for *that* batch to the current snapshot. A
checkpoint therefore holds the position right after the last consumed batch, never the prefetched one.

Rules that keep the position exact inside torchdata and Lightning:

- A restored position is pending until an iterator starts yielding. torchdata calls ``iter(sampler)`` more than
  once while it builds a restored iterator; every iterator created in between starts at the restored position.
  Later passes start at 0, so a validation loader can be iterated again and again.
- ``set_epoch`` with the epoch already set is a no-op. Lightning restores the loader, builds the iterator and
  *then* calls ``set_epoch(current epoch)``; rewinding there would make the next checkpoint record a wrong
  position. A different epoch rewinds to 0.
- Only the most recently created iterator moves ``position`` (torchdata abandons the iterators it made before
  the restore), and it writes the absolute place, so nothing that happens between two batches can skew it.
- A restored state at the very end of an epoch means "next epoch, position 0": no pass can have anything
  left to yield in the finished one.

``position`` counts indices of this rank's shard. Every rank consumes the same number of batches, so the one
state that Lightning saves (rank 0's) restores every rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` derived from ``seed`` and labels, the same in every process.

    Unlike ``seed + epoch`` (``DistributedSampler``), different (seed, epoch) pairs never share a stream.

    Args:
        seed: the user's seed.
        labels: what the stream is for, e.g. an epoch number or ``"data"``.
    """
    text = "/".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


class ResumableSampler(Sampler[int]):
    """Indices of one rank's shard, in an order fixed by (seed, epoch), resumable mid-epoch.

    The epoch's permutation of ``range(num_samples)`` comes from a local ``torch.Generator`` seeded from
    (seed, epoch), never from the global RNG. It is truncated to a multiple of ``num_replicas`` and rank ``r``
    takes ``perm[r::num_replicas]``: shards are disjoint and of equal length.

    Example::

        sampler = ResumableSampler(1000, seed=7)
        sampler.set_epoch(3)
        it = iter(sampler)
        first = [next(it) for _ in range(10)]
        state = sampler.state_dict()  # {"epoch": 3, "position": 10}
        again = ResumableSampler(1000, seed=7)
        again.load_state_dict(state)
        assert list(again) == list(it)

    Args:
        num_samples: size of the dataset to draw indices from.
        seed: seed of the order; the same (seed, epoch) gives the same order in every process and run.
        shuffle: shuffle each epoch; if False the order is ``0, 1, 2, ...`` (then sharded).
        num_replicas: number of ranks that share the data.
        rank: this process's rank, in ``[0, num_replicas)``.
    """

    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        for name, value, low in (("num_samples", num_samples, 0), ("num_replicas", num_replicas, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ResumableSampler: {name} must be an integer >= {low}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank must be an integer in [0, {num_replicas}), got {rank!r}")
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._position = 0  # indices of this epoch's shard already yielded (or restored)
        self._restored = False  # a loaded position waits for the next pass that yields
        self._live: object | None = None  # token of the iterator allowed to move the position

    @property
    def position(self) -> int:
        """Indices of the current epoch's shard yielded so far by the latest pass (or restored and pending)."""
        return self._position

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch`` and rewind to its start; setting the epoch already set changes nothing.

        Args:
            epoch: the epoch whose order the next pass yields.
        """
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._restored = False

    def shard(self, epoch: int | None = None) -> list[int]:
        """This rank's whole shard for ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            perm = torch.randperm(self.num_samples, generator=generator)
        else:
            perm = torch.arange(self.num_samples)
        usable = len(self) * self.num_replicas
        return perm[:usable][self.rank :: self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        # Eager: the order and the start are fixed when the iterator is made, as workers prefetch at once.
        start = self._position if self._restored else 0
        self._position = start
        token = self._live = object()
        return self._yield_from(self.shard(), start, token)

    def _yield_from(self, indices: list[int], start: int, token: object) -> Iterator[int]:
        for position in range(start, len(indices)):
            if self._live is token:
                self._restored = False
                self._position = position + 1  # counted before it is handed out
            yield indices[position]
        if self._live is token:
            self._restored = False

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}`` as plain ints, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {"epoch": int(self.epoch), "position": int(self._position)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next pass that yields start at the saved place (at an epoch's end: the next epoch's start).

        Args:
            state_dict: what :meth:`state_dict` returned; missing keys default to epoch 0, position 0.
        """
        epoch = int(state_dict.get("epoch", 0))
        position = int(state_dict.get("position", 0))
        if not 0 <= position <= len(self):
            raise ValueError(
                f"ResumableSampler: saved position {position} is outside this shard of {len(self)} indices "
                "(did the dataset or the number of devices change?)"
            )
        if position == len(self) > 0:
            # Nothing is left of that epoch, so the next pass is the next epoch's. Lightning restores such a
            # state (a checkpoint taken at the last batch) without making a new iterator for the next epoch.
            epoch, position = epoch + 1, 0
        self.epoch = epoch
        self._position = position
        self._restored = True
        self._live = None
