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

What ``position`` means: the place in every **canonical shard** (`lightning_app.data.canonical`), not in this
process's share. A run of C canonical ranks cuts each epoch's permutation into C shards ``perm[c::C]`` and takes
``micro_batch_size`` indices of each shard per batch, whatever the number of devices; ``position`` counts the
indices of each shard consumed so far, the same number on every device and for any number of devices. The one
state that Lightning saves (rank 0's) therefore restores every rank of a resumed run on 1, 2 or 3 devices alike.
With the defaults (C = ``num_replicas``, one index per batch) this is the rank's own shard, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from lightning_app.errors import ConfigError


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
    """Indices of one process's share of each batch, in an order fixed by (seed, epoch), resumable mid-epoch.

    The epoch's permutation of ``range(num_samples)`` comes from a local ``torch.Generator`` seeded from
    (seed, epoch), never from the global RNG. It is truncated to a multiple of ``canonical_ranks`` (C) and cut into
    C canonical shards, shard ``c`` = ``perm[c::C]``. Batch ``i`` of the epoch (a *round*) is the C canonical
    micro-batches ``shard_c[k + i*b : k + (i+1)*b]`` in canonical order (b = ``micro_batch_size``, k = the restored
    position), and of those ``C*b`` indices process ``rank`` of ``num_replicas`` (W) takes the slice
    ``[rank*C*b // W, (rank+1)*C*b // W)``. A loader over it must use that slice's length as its batch size
    (`process_batch_size`). With the defaults (C = W, b = 1) rank ``r`` takes ``perm[r::W]``: shards are disjoint
    and of equal length.

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
        num_replicas: number of processes that share the data (W).
        rank: this process's rank, in ``[0, num_replicas)``.
        canonical_ranks: the run's canonical width C (default: ``num_replicas``).
        micro_batch_size: indices of each canonical shard per batch (b).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        canonical_ranks: int | None = None,
        micro_batch_size: int = 1,
    ):
        canonical_ranks = num_replicas if canonical_ranks is None else canonical_ranks
        for name, value, low in (
            ("num_samples", num_samples, 0),
            ("num_replicas", num_replicas, 1),
            ("canonical_ranks", canonical_ranks, 1),
            ("micro_batch_size", micro_batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ResumableSampler: {name} must be an integer >= {low}, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank must be an integer in [0, {num_replicas}), got {rank!r}")
        if num_replicas > canonical_ranks * micro_batch_size:
            raise ValueError(
                f"ResumableSampler: {num_replicas} replicas cannot share batches of {canonical_ranks} x "
                f"{micro_batch_size} indices"
            )
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.canonical_ranks = canonical_ranks
        self.micro_batch_size = micro_batch_size
        round_size = canonical_ranks * micro_batch_size
        self._slice = (rank * round_size // num_replicas, (rank + 1) * round_size // num_replicas)
        self.epoch = 0
        self._position = 0  # indices of each canonical shard consumed this epoch (or restored)
        self._restored = False  # a loaded position waits for the next pass that yields
        self._live: object | None = None  # token of the iterator allowed to move the position

    @property
    def position(self) -> int:
        """Indices of each canonical shard consumed so far this epoch by the latest pass (or restored and pending)."""
        return self._position

    @property
    def shard_length(self) -> int:
        """Indices in each canonical shard: ``num_samples // canonical_ranks``."""
        return self.num_samples // self.canonical_ranks

    @property
    def process_batch_size(self) -> int:
        """Indices this process takes from each round: the batch size of a loader over this sampler."""
        return self._slice[1] - self._slice[0]

    def _rounds(self, position: int) -> int:
        return (self.shard_length - position) // self.micro_batch_size

    def __len__(self) -> int:
        return self._rounds(0) * self.process_batch_size

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch`` and rewind to its start; setting the epoch already set changes nothing.

        Args:
            epoch: the epoch whose order the next pass yields.
        """
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0
            self._restored = False

    def shard(self, epoch: int | None = None, position: int = 0) -> list[int]:
        """What this process yields of ``epoch`` (default: the current one) from canonical ``position`` on."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            perm = torch.randperm(self.num_samples, generator=generator)
        else:
            perm = torch.arange(self.num_samples)
        ranks, length, b = self.canonical_ranks, self.shard_length, self.micro_batch_size
        rounds = self._rounds(position)
        shards = perm[: length * ranks].view(length, ranks).t()  # (C, L): row c is perm[c::C]
        taken = shards[:, position : position + rounds * b].reshape(ranks, rounds, b)  # (C, rounds, b)
        by_round = taken.permute(1, 0, 2).reshape(rounds, ranks * b)  # (rounds, C*b): canonical order
        start, stop = self._slice
        return by_round[:, start:stop].reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        # Eager: the order and the start are fixed when the iterator is made, as workers prefetch at once.
        start = self._position if self._restored else 0
        self._position = start
        token = self._live = object()
        return self._yield_from(self.shard(position=start), start, token)

    def _yield_from(self, indices: list[int], start: int, token: object) -> Iterator[int]:
        per_round, b = self.process_batch_size, self.micro_batch_size
        for handed_out, index in enumerate(indices, start=1):
            if self._live is token:
                self._restored = False
                # Counted before it is handed out; a round counts once this process has taken all of its share.
                self._position = start + (handed_out // per_round) * b
            yield index
        if self._live is token:
            self._restored = False

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}`` as plain ints, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {"epoch": int(self.epoch), "position": int(self._position)}

    def state_after(self, state_dict: dict[str, Any], batches: int, batch_size: int) -> dict[str, int]:
        """``state_dict`` moved on by ``batches`` loader batches of ``batch_size`` indices each."""
        rounds = batches * (batch_size // self.process_batch_size)
        position = int(state_dict["position"]) + rounds * self.micro_batch_size
        return {"epoch": int(state_dict["epoch"]), "position": position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next pass that yields start at the saved place (at an epoch's end: the next epoch's start).

        Args:
            state_dict: what :meth:`state_dict` returned (by a sampler of the same data and canonical ranks, on any
                number of processes); missing keys default to epoch 0, position 0.

        Raises:
            ConfigError: the position is beyond the canonical shard (the data changed under the run).
        """
        epoch = int(state_dict.get("epoch", 0))
        position = int(state_dict.get("position", 0))
        if not 0 <= position <= self.shard_length:
            raise ConfigError(
                f"--resume: the checkpoint's data position {position} is outside this shard of {self.shard_length} "
                f"indices per canonical rank ({self.num_samples} samples over {self.canonical_ranks}); did the data "
                "change under the run?"
            )
        if position > 0 and self._rounds(position) == 0:
            # Nothing is left of that epoch, so the next pass is the next epoch's. Lightning restores such a
            # state (a checkpoint taken at the last batch) without making a new iterator for the next epoch.
            epoch, position = epoch + 1, 0
        self.epoch = epoch
        self._position = position
        self._restored = True
        self._live = None
