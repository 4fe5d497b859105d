"""RNG states kept per global rank: round trip, a resume on another number of ranks, old checkpoints."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import torch

from lightning_app.module import LanguageModel
from lightning_app.rng import capture_rng_state, pack_rank_states, rank_state, restore_rng_state


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _rank_states(n: int) -> tuple[dict, list[tuple]]:
    """States for ranks 0..n-1, each on its own stream, and what each rank draws next from it."""
    states, nexts = [], []
    for rank in range(n):
        random.seed(rank), np.random.seed(rank), torch.manual_seed(rank)
        states.append(capture_rng_state())
        nexts.append(_draws())
    return pack_rank_states(states), nexts


def _resume(saved: dict, rank: int, world_size: int, model: LanguageModel | None = None) -> LanguageModel:
    """What a resume does on ``rank`` of a ``world_size`` run: load the checkpoint, then start training."""
    model = model or LanguageModel(model_size="tiny", vocab_size=8)
    model.on_load_checkpoint({"rng_states": saved})
    trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    object.__setattr__(model, "_trainer", trainer)
    model.on_train_start()
    return model


def test_round_trip_repeats_the_draws():
    _draws()
    saved = pack_rank_states([capture_rng_state()])
    expected = _draws()
    restore_rng_state(rank_state(saved, 0))
    assert _draws() == expected


def test_each_rank_restores_its_own_entry(monkeypatch):
    saved, nexts = _rank_states(2)
    for rank in (0, 1):
        monkeypatch.setattr(LanguageModel, "global_rank", property(lambda self, r=rank: r))
        _resume(saved, rank, 2)
        assert _draws() == nexts[rank]


def test_fewer_ranks_restore_what_matches_and_say_so_in_one_line(monkeypatch, caplog):
    saved, nexts = _rank_states(2)
    monkeypatch.setattr(LanguageModel, "global_rank", property(lambda self: 0))
    with caplog.at_level(logging.INFO, logger="lightning_app"):
        _resume(saved, 0, 1)
    assert _draws() == nexts[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RNG state")]
    assert lines == ["RNG state: checkpoint has ranks 0-1, this run has 1: the state of rank 1 is not used"]


def test_more_ranks_restore_what_matches_and_say_so_in_one_line(monkeypatch, caplog):
    saved, nexts = _rank_states(2)
    for rank in (0, 1, 2):
        model = LanguageModel(model_size="tiny", vocab_size=8)
        random.seed(99), np.random.seed(99), torch.manual_seed(99)  # this run's seed
        seeded = _draws()
        random.seed(99), np.random.seed(99), torch.manual_seed(99)
        monkeypatch.setattr(LanguageModel, "global_rank", property(lambda self, r=rank: r))
        with caplog.at_level(logging.INFO, logger="lightning_app"):
            _resume(saved, rank, 3, model)
        assert _draws() == (nexts[rank] if rank < 2 else seeded)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RNG state")]
    assert lines == ["RNG state: checkpoint has ranks 0-1, this run has 3: rank 2 starts from its seed"]


def test_an_old_flat_checkpoint_is_rank_zeros_state(monkeypatch):
    model = LanguageModel(model_size="tiny", vocab_size=8)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    old = capture_rng_state()
    old.pop("cuda", None)
    if torch.cuda.is_available():
        old["cuda"] = []  # the old list form: a device count that does not match is left alone
    expected = _draws()
    monkeypatch.setattr(LanguageModel, "global_rank", property(lambda self: 0))
    _resume(old, 0, 1, model)
    assert _draws() == expected
    assert rank_state(old, 1) is None


def test_the_new_format_loads_with_weights_only(tmp_path):
    saved, nexts = _rank_states(2)
    torch.save({"rng_states": saved}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["rng_states"]
    assert loaded["world_size"] == 2 and sorted(loaded["per_rank"]) == [0, 1]
    restore_rng_state(rank_state(loaded, 1))
    assert _draws() == nexts[1]
