"""The canonical data-parallel layout: which samples each step takes on 1, 2 or 3 devices, the sampler's position
that means the same on all of them, what a checkpoint keeps, and the one-line messages."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.accelerators import CPUAccelerator

from lightning_app.data import ResumableDataLoader, ResumableSampler, SyntheticDataModule
from lightning_app.data.canonical import (
    CHECKPOINT_KEY,
    Layout,
    SavedLayout,
    fresh_layout,
    precision_on_resume,
    read_saved_layout,
    resumed_layout,
    saved_layout,
)
from lightning_app.errors import ConfigError
from tests.support.indices import Indices

# -- the layout's arithmetic ------------------------------------------------------------------------------------


def _micro(layout: Layout) -> list[tuple[int, int, int, float]]:
    return [(m.stream, m.start, m.stop, m.weight) for m in layout.micro_batches()]


def test_one_device_runs_both_canonical_micro_batches_each_weighted_a_half():
    layout = Layout(canonical_ranks=2, micro_batch_size=8)
    assert layout.process_batch_size == 16 and layout.global_batch_size == 16
    assert _micro(layout) == [(0, 0, 8, 0.5), (1, 8, 16, 0.5)]
    assert layout.exact and layout.divides


def test_two_devices_run_one_canonical_micro_batch_each():
    assert [_micro(Layout(2, 8, world_size=2, rank=r)) for r in (0, 1)] == [[(0, 0, 8, 1.0)], [(1, 0, 8, 1.0)]]
    assert Layout(2, 8, world_size=2, accumulate_grad_batches=3).global_batch_size == 48


def test_four_canonical_ranks_on_two_devices_keep_their_streams_but_are_not_bit_exact():
    layout = Layout(canonical_ranks=4, micro_batch_size=8, world_size=2, rank=1)
    assert _micro(layout) == [(2, 0, 8, 0.5), (3, 8, 16, 0.5)]
    assert layout.divides and not layout.exact
    assert Layout(4, 8, world_size=4).exact and Layout(2, 8, world_size=1).exact and Layout(1, 8).exact


def test_three_devices_split_a_round_of_two_into_near_equal_weighted_slices():
    layouts = [Layout(canonical_ranks=2, micro_batch_size=8, world_size=3, rank=r) for r in range(3)]
    assert [layout.process_slice() for layout in layouts] == [(0, 5), (5, 10), (10, 16)]
    micro = [_micro(layout) for layout in layouts]
    assert micro == [[(0, 0, 5, 5 * 3 / 16)], [(1, 0, 5, 5 * 3 / 16)], [(2, 0, 6, 6 * 3 / 16)]]
    # DDP divides the sum of the 3 ranks' gradients by 3: the weights make that the mean over the 16 samples.
    assert sum(m[0][3] for m in micro) / 3 == pytest.approx(1.0)
    assert not layouts[0].divides and not layouts[0].exact


def test_a_slice_larger_than_a_canonical_micro_batch_runs_in_pieces():
    layout = Layout(canonical_ranks=4, micro_batch_size=4, world_size=3, rank=2)  # 16 samples: 5, 5, 6
    assert _micro(layout) == [(2, 0, 3, 3 * 3 / 16), (2, 3, 6, 3 * 3 / 16)]  # never a forward over 4 rows


def test_describe_names_the_global_batch_and_its_parts():
    assert Layout(2, 8, accumulate_grad_batches=2).describe() == (
        "global batch 32 (2 canonical ranks x 8 x 2 accumulated) on 1 device"
    )


# -- fresh start and resume ---------------------------------------------------------------------------------------


def test_a_fresh_start_takes_the_requested_width_or_the_devices_when_there_are_more():
    assert fresh_layout(2, 8, world_size=1, rank=0, accumulate=1).canonical_ranks == 2
    assert fresh_layout(2, 8, world_size=4, rank=3, accumulate=1).canonical_ranks == 4
    assert fresh_layout(4, 8, world_size=2, rank=0, accumulate=1).canonical_ranks == 4
    with pytest.raises(ConfigError) as error:
        fresh_layout(3, 8, world_size=2, rank=0, accumulate=1)
    expected = "--data.canonical_ranks: got 3; expected a multiple of the 2 devices (e.g. 4), or at most 2"
    assert str(error.value) == expected


SAVED_TWO = SavedLayout(canonical_ranks=2, world_size=2, micro_batch_size=8, accumulate_grad_batches=1)


@pytest.mark.parametrize(
    ("saved", "world_size", "batch", "line"),
    [
        (SAVED_TWO, 2, 8, None),
        (
            SAVED_TWO,
            1,
            8,
            "Resuming the run's 2 canonical ranks on 1 device (2 canonical micro-batches each): "
            "bit for bit as on 2 devices",
        ),
        (
            SavedLayout(2, 1, 8, 1),
            2,
            8,
            "Resuming the run's 2 canonical ranks on 2 devices: bit for bit as on 2 devices",
        ),
        (
            SAVED_TWO,
            3,
            8,
            "Resuming the run's 2 canonical ranks on 3 devices: the same 16 samples per step, re-split over the "
            "devices; not bit-exact (dropout streams and gradient sums differ)",
        ),
        (
            SavedLayout(4, 4, 8, 1),
            2,
            8,
            "Resuming the run's 4 canonical ranks on 2 devices (2 canonical micro-batches each): the same samples "
            "and random streams per step; not bit-exact (the gradients of 4 canonical ranks are summed in another "
            "order)",
        ),
        (
            SAVED_TWO,
            2,
            16,
            "Global batch 16 -> 32 (--data.batch_size 8 -> 16): the sample order is kept; the steps, the "
            "schedule's length and the numbers are no longer the saved run's (--data.batch_size 8 and "
            "--trainer.accumulate_grad_batches 1 keep them)",
        ),
    ],
    ids=["same", "2->1", "1->2", "2->3", "4->2", "batch"],
)
def test_a_resume_keeps_the_runs_width_and_says_in_one_line_what_changed(saved, world_size, batch, line):
    layout, message = resumed_layout(saved, batch, world_size, 0, 1)
    assert layout.canonical_ranks == saved.canonical_ranks
    assert message == line


def test_a_resume_on_more_devices_than_samples_in_a_batch_is_one_line():
    with pytest.raises(ConfigError, match=r"^--trainer.devices: got 5 devices; expected at most 4"):
        resumed_layout(SavedLayout(2, 2, 2, 1), 2, 5, 0, 1)


# -- the sampler: the same rounds on any number of devices --------------------------------------------------------


def _rounds(world_size: int, epoch: int, position: int = 0, n: int = 50, ranks: int = 2, b: int = 3) -> list:
    """Each batch of the epoch as the processes together hold it, rank 0's part first."""
    samplers = [
        ResumableSampler(n, seed=4, num_replicas=world_size, rank=r, canonical_ranks=ranks, micro_batch_size=b)
        for r in range(world_size)
    ]
    parts = []
    for sampler in samplers:
        sampler.set_epoch(epoch)
        indices = sampler.shard(position=position)
        size = sampler.process_batch_size
        parts.append([indices[i : i + size] for i in range(0, len(indices), size)])
    return [sum(batch, []) for batch in zip(*parts, strict=True)]


@pytest.mark.parametrize("epoch", [0, 3])
def test_every_number_of_devices_takes_the_same_canonical_rounds(epoch):
    full = ResumableSampler(50, seed=4)
    full.set_epoch(epoch)
    perm = full.shard()  # the epoch's permutation (1 canonical rank, 1 index per batch)
    shards = [perm[: 50 // 2 * 2][c::2] for c in range(2)]
    expected = [shards[0][i * 3 : i * 3 + 3] + shards[1][i * 3 : i * 3 + 3] for i in range(25 // 3)]
    assert _rounds(1, epoch) == _rounds(2, epoch) == _rounds(3, epoch) == expected
    assert _rounds(1, epoch, position=7) == _rounds(3, epoch, position=7)  # a restored place: rounds from there


def test_the_position_is_per_canonical_shard_and_the_same_on_every_number_of_devices():
    states = []
    for world_size in (1, 2, 3):
        sampler = ResumableSampler(50, seed=4, num_replicas=world_size, rank=0, canonical_ranks=2, micro_batch_size=3)
        it = iter(sampler)
        for _ in range(4 * sampler.process_batch_size):  # four batches
            next(it)
        states.append(sampler.state_dict())
    assert states == [{"epoch": 0, "position": 12}] * 3


def test_a_loader_state_saved_on_two_devices_resumes_on_one_and_on_three():
    def loader(world_size: int, rank: int) -> ResumableDataLoader:
        sampler = ResumableSampler(
            40, seed=2, num_replicas=world_size, rank=rank, canonical_ranks=2, micro_batch_size=2
        )
        return ResumableDataLoader(Indices(40), batch_size=sampler.process_batch_size, sampler=sampler, drop_last=True)

    def epoch(world_size: int) -> list[list[int]]:
        loaders = [loader(world_size, r) for r in range(world_size)]
        return [sum((b.tolist() for b in batch), []) for batch in zip(*loaders, strict=True)]

    reference = epoch(2)
    saved = loader(2, 0)
    it = iter(saved)
    for _ in range(4):
        next(it)
    state = saved.state_dict()  # rank 0's, as Lightning saves it
    for world_size in (1, 3):
        resumed = [loader(world_size, r) for r in range(world_size)]
        for one in resumed:
            one.load_state_dict(state)
        rest = [sum((b.tolist() for b in batch), []) for batch in zip(*resumed, strict=True)]
        assert rest == reference[4:], world_size


def test_a_position_beyond_the_canonical_shard_is_one_line():
    sampler = ResumableSampler(40, seed=0, canonical_ranks=2, micro_batch_size=4)
    with pytest.raises(ConfigError) as error:
        sampler.load_state_dict({"epoch": 0, "position": 21})
    assert "outside this shard of 20 indices per canonical rank" in str(error.value)
    assert "\n" not in str(error.value)


# -- the data module ----------------------------------------------------------------------------------------------

TINY = {"vocab_size": 8, "seq_len": 4, "batch_size": 4, "num_train_sequences": 26, "num_val_sequences": 4}


def _trainer(world_size: int, rank: int, accumulate: int = 1) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        accumulate_grad_batches=accumulate,
        accelerator=CPUAccelerator(),
        fit_loop=SimpleNamespace(epoch_progress=progress),
    )


def _batches(world_size: int, **kwargs) -> list[list[tuple]]:
    per_rank = []
    for rank in range(world_size):
        dm = SyntheticDataModule(**{**TINY, **kwargs})
        dm.trainer = _trainer(world_size, rank)
        per_rank.append([[tuple(x.tolist()) for x in inputs] for inputs, _ in dm.train_dataloader()])
    return [sum(batch, []) for batch in zip(*per_rank, strict=True)]


def test_the_data_module_gives_every_number_of_devices_the_same_batches():
    one = _batches(1)
    assert len(one) == (26 // 2) // 4 == 3 and all(len(batch) == 8 for batch in one)  # 2 canonical ranks x 4
    assert _batches(2) == one
    dm = SyntheticDataModule(**TINY)
    assert dm.num_train_batches(1) == dm.num_train_batches(2) == 3 and dm.global_batch_size() == 8


def test_the_data_module_resumes_with_the_checkpoints_width_and_refuses_a_bad_one_at_a_fresh_start():
    dm = SyntheticDataModule(**TINY, canonical_ranks=3)
    dm.trainer = _trainer(2, 0)
    with pytest.raises(ConfigError, match="^--data.canonical_ranks: got 3"):
        dm.layout()
    assert dm.resume_layout(SavedLayout(2, 1, 4, 1)).startswith("Resuming the run's 2 canonical ranks on 2 devices")
    assert dm.layout().canonical_ranks == 2 and len(dm.train_dataloader()) == 3


# -- what a checkpoint keeps --------------------------------------------------------------------------------------


def test_a_checkpoint_keeps_the_layout_in_plain_values_and_it_reads_back_mapped(tmp_path):
    layout = Layout(2, 8, world_size=1, accumulate_grad_batches=2)
    path = tmp_path / "x.ckpt"
    torch.save({CHECKPOINT_KEY: layout.to_checkpoint("16-mixed"), "state_dict": {"w": torch.zeros(3)}}, path)
    assert read_saved_layout(path) == SavedLayout(2, 1, 8, 2, "16-mixed")
    assert read_saved_layout(path).global_batch_size == 32


def test_a_checkpoint_from_before_layouts_is_read_as_its_number_of_ranks():
    loader = {"_sampler_iter_state": {"samples_yielded": 480, "sampler_state": {}}, "_sampler_iter_yielded": 30}
    old = {
        "rng_states": {"per_rank": {0: {}, 1: {}}, "world_size": 2},
        "callbacks": {
            "KaggleModelCheckpoint": {
                "training": {"trainer.accumulate_grad_batches": 1, "trainer.precision": "16-mixed"}
            }
        },
        "loops": {"fit_loop": {"state_dict": {"combined_loader": [loader]}}},
    }
    assert saved_layout(old) == SavedLayout(2, 2, 16, 1, "16-mixed")
    assert saved_layout({}) == SavedLayout(1, 1)  # nothing known: one rank, batch unknown
    assert saved_layout({}).global_batch_size is None


@pytest.mark.parametrize(
    ("saved", "auto", "expected", "line"),
    [
        ("16-mixed", "bf16-mixed", "16-mixed", "Precision 16-mixed: the run's own, kept on resume (auto would choose "
         "bf16-mixed here)"),
        ("16-mixed", "32-true", "32-true", "Precision 32-true: the run trained in 16-mixed, which this machine "
         "cannot run"),
        ("bf16-mixed", "16-mixed", "16-mixed", "Precision 16-mixed: the run trained in bf16-mixed, which this "
         "machine cannot run"),
        ("bf16-mixed", "bf16-mixed", "bf16-mixed", None),
    ],
)  # fmt: skip
def test_precision_left_to_auto_keeps_the_runs_own_on_resume(tmp_path, caplog, saved, auto, expected, line):
    path = tmp_path / "x.ckpt"
    torch.save({CHECKPOINT_KEY: Layout(2, 8).to_checkpoint(saved)}, path)
    with caplog.at_level(logging.INFO, logger="lightning_app"):
        assert precision_on_resume(str(path), auto) == expected
    assert [r.getMessage() for r in caplog.records] == ([line] if line else [])
    assert precision_on_resume(None, auto) == precision_on_resume("auto", auto) == auto
