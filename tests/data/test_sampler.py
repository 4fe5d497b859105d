"""ResumableSampler alone and inside torchdata's StatefulDataLoader: the order is a pure function of (seed,
epoch), and a loader restored from a state dict continues exactly where the saved one stopped."""

from __future__ import annotations

import io

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_app.data import ResumableDataLoader, ResumableSampler
from tests.support.indices import Indices


def test_order_is_a_pure_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != list(ResumableSampler(50, seed=3))
    assert list(ResumableSampler(50, seed=4)) != list(ResumableSampler(50, seed=3))
    assert list(ResumableSampler(5, seed=3, shuffle=False)) == [0, 1, 2, 3, 4]


def test_iterating_never_touches_the_global_rng():
    before = torch.get_rng_state()
    sampler = ResumableSampler(100, seed=0)
    list(sampler)
    sampler.set_epoch(5)
    list(sampler)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("num_samples", [103, 100])
def test_shards_are_disjoint_equal_and_cover_the_truncated_permutation(num_samples):
    replicas = 4
    shards = [ResumableSampler(num_samples, seed=1, num_replicas=replicas, rank=r) for r in range(replicas)]
    for s in shards:
        s.set_epoch(2)
    orders = [list(s) for s in shards]
    assert all(len(order) == len(s) == num_samples // replicas for order, s in zip(orders, shards))
    full = ResumableSampler(num_samples, seed=1)
    full.set_epoch(2)
    truncated = list(full)[: (num_samples // replicas) * replicas]
    assert [i for step in zip(*orders) for i in step] == truncated  # rank r takes perm[r::replicas]
    assert len(set().union(*map(set, orders))) == len(truncated)


def test_state_dict_resumes_at_the_exact_next_index():
    sampler = ResumableSampler(40, seed=9)
    sampler.set_epoch(3)
    it = iter(sampler)
    head = [next(it) for _ in range(11)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "position": 11}
    assert all(type(v) is int for v in state.values())
    resumed = ResumableSampler(40, seed=9)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert rest == list(it) and head + rest == sampler.shard(3)
    assert resumed.state_dict() == {"epoch": 3, "position": 40}
    assert list(resumed) == list(ResumableSampler(40, seed=9).shard(3))  # the next pass starts at 0 again


def test_restore_survives_iterators_made_before_the_first_yield():
    """torchdata builds (and drops) iterators while it restores; the restored place must hold for all of them."""
    sampler = ResumableSampler(20, seed=0)
    sampler.load_state_dict({"epoch": 1, "position": 5})
    iter(sampler)
    iter(sampler)
    assert list(sampler) == sampler.shard(1)[5:]


def test_set_epoch_same_epoch_is_a_no_op_and_new_epoch_rewinds():
    sampler = ResumableSampler(20, seed=0)
    sampler.load_state_dict({"epoch": 2, "position": 7})
    it = iter(sampler)
    next(it)
    sampler.set_epoch(2)  # what Lightning does right after restoring a mid-epoch iterator
    assert sampler.state_dict() == {"epoch": 2, "position": 8}
    next(it)
    assert sampler.state_dict() == {"epoch": 2, "position": 9}
    sampler.set_epoch(3)
    assert sampler.state_dict() == {"epoch": 3, "position": 0}
    assert list(sampler) == sampler.shard(3)


def test_a_state_at_the_end_of_an_epoch_resumes_at_the_next_epoch():
    sampler = ResumableSampler(12, seed=0, num_replicas=2, rank=1)
    sampler.load_state_dict({"epoch": 4, "position": 6})
    assert sampler.state_dict() == {"epoch": 5, "position": 0}
    assert list(sampler) == sampler.shard(5)


def test_load_state_dict_defaults_and_rejects_a_foreign_position():
    sampler = ResumableSampler(10, seed=0)
    sampler.load_state_dict({})
    assert sampler.state_dict() == {"epoch": 0, "position": 0}
    with pytest.raises(ValueError, match="outside this shard"):
        sampler.load_state_dict({"epoch": 0, "position": 11})
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(10, seed=0, num_replicas=2, rank=2)


def _loader(num_workers: int, cls: type = StatefulDataLoader, n: int = 46) -> StatefulDataLoader:
    """As the data modules build it: own sampler, own generator, drop_last, persistent workers."""
    return cls(
        Indices(n),
        batch_size=4,
        sampler=ResumableSampler(n, seed=11),
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(5),
    )


def _epoch(loader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [batch.tolist() for batch in loader]


def _through_checkpoint(state: dict) -> dict:
    """What Lightning's checkpoint does to the state: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("cls", [StatefulDataLoader, ResumableDataLoader])
def test_stateful_dataloader_resumes_mid_epoch_exactly(num_workers, cls):
    before = torch.get_rng_state()
    reference = _loader(num_workers, cls)
    epoch1, epoch2 = _epoch(reference, 1), _epoch(reference, 2)
    assert len(epoch1) == 11 and epoch1 != epoch2

    def restore(state: dict):
        loader = _loader(num_workers, cls)
        loader.load_state_dict(state)
        it = iter(loader)  # Lightning builds the restored iterator first ...
        loader.sampler.set_epoch(1)  # ... and then sets the (same) epoch
        return loader, it

    for k in (3, 9):
        first = _loader(num_workers, cls)
        first.sampler.set_epoch(1)
        it = iter(first)
        seen = [next(it).tolist() for _ in range(k)]
        loader, it = restore(_through_checkpoint(first.state_dict()))
        seen.append(next(it).tolist())  # one batch after the resume, then a second save and resume
        loader, it = restore(_through_checkpoint(loader.state_dict()))
        seen.extend(batch.tolist() for batch in it)
        assert seen == epoch1
        assert _epoch(loader, 2) == epoch2  # and the next epoch is the uninterrupted next epoch
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(("saved_workers", "resumed_workers"), [(0, 2), (2, 0), (2, 1)])
def test_resumable_dataloader_resumes_across_a_change_of_num_workers(saved_workers, resumed_workers):
    reference = _epoch(_loader(0), 0)
    first = _loader(saved_workers, ResumableDataLoader)
    it = iter(first)
    head = [next(it).tolist() for _ in range(4)]
    state = _through_checkpoint(first.state_dict())
    second = _loader(resumed_workers, ResumableDataLoader)
    second.load_state_dict(state)
    assert head + [batch.tolist() for batch in second] == reference


def test_plain_stateful_dataloader_rejects_a_change_of_num_workers():
    """Why ResumableDataLoader exists: torchdata asserts when the worker layout differs."""
    first = _loader(0)
    next(iter(first))
    second = _loader(2)
    second.load_state_dict(first.state_dict())
    with pytest.raises(AssertionError):
        iter(second)
