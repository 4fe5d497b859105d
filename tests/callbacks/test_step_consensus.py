"""StepConsensus: under DDP one small all-reduce every K batches decides time-based saves, the deadline and
signals alike on every rank; on one process the decisions are immediate and there is no collective."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from callbacks.checkpoint import TIME_SAVE_DUE, KaggleModelCheckpoint
from callbacks.deadline import DEADLINE_DUE, SIGNAL_RECEIVED, SessionDeadline
from callbacks.step_consensus import StepConsensus, every_for
from tests.cli_helpers import RESUME_FLAGS, cli_env, fit_args, start


def _trainer(world_size: int, epoch: int = 0, callbacks=()) -> SimpleNamespace:
    callbacks = list(callbacks)
    return SimpleNamespace(
        world_size=world_size,
        current_epoch=epoch,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        callbacks=callbacks,
        checkpoint_callbacks=[cb for cb in callbacks if isinstance(cb, KaggleModelCheckpoint)],
    )


class Clock:
    """A clock that advances by ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_k_fits_the_batches_of_two_seconds():
    assert every_for(0.0) == 1  # nothing measured yet: agree at every batch
    assert every_for(0.1) == 20
    assert every_for(0.25) == 8
    assert every_for(0.7) == 2
    assert every_for(5.0) == 1
    assert every_for(0.01, max_lateness=0.5) == 50


def test_one_process_answers_at_every_batch_without_a_collective():
    def no_collective(values):
        raise AssertionError("a collective on one process")

    consensus = StepConsensus(all_reduce=no_collective, clock=Clock(0.01))
    flag = {"value": False}
    consensus.ask("flag", lambda: flag["value"])
    trainer = _trainer(world_size=1)
    answers = [consensus.at_batch_end(trainer, i)["flag"] for i in range(5)]
    flag["value"] = True
    answers += [consensus.at_batch_end(trainer, i)["flag"] for i in range(5, 7)]
    assert answers == [False] * 5 + [True, True]
    assert consensus.collectives == 0 and consensus.lateness_seconds == 0.0


def test_a_second_caller_in_the_same_batch_shares_the_answers():
    calls = []
    consensus = StepConsensus(all_reduce=lambda values: calls.append(values) or values, clock=Clock(0.5))
    consensus.ask("flag", lambda: True)
    trainer = _trainer(world_size=2)
    for batch in range(12):
        first = consensus.at_batch_end(trainer, batch)  # the deadline's hook
        assert consensus.at_batch_end(trainer, batch) == first  # the checkpoint's, in the same batch
    # 0.5 s per batch: K = 4 once a batch is measured; batches 1, 2, 6, 10 are checks.
    assert len(calls) == consensus.collectives == 4 and consensus.every == 4
    assert consensus.lateness_seconds == pytest.approx(2.0)


class ThreadRanks:
    """``world`` ranks as threads: the all-reduce meets at a barrier, so ranks that disagree on when to check
    time out instead of passing."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=10)
        self.slots: list[torch.Tensor | None] = [None] * world

    def all_reduce(self, rank: int):
        def reduce(values: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = values.clone()
            self.barrier.wait()
            result = torch.stack(self.slots).amax(dim=0)
            self.barrier.wait()
            values.copy_(result)
            return values

        return reduce


def test_ranks_check_at_the_same_batches_and_decide_together():
    world, batches, turns_true = 2, 80, 30
    ranks = ThreadRanks(world)
    seconds_per_batch = [0.1, 0.25]  # rank 1 is the slowest: K = floor(2 / 0.25) = 8 for both
    results: dict[int, dict] = {}

    def train(rank: int) -> None:
        consensus = StepConsensus(all_reduce=ranks.all_reduce(rank), clock=Clock(seconds_per_batch[rank]))
        seen = {"batch": -1}
        consensus.ask("stop", lambda: rank == 1 and seen["batch"] >= turns_true)  # sticky, on rank 1 only
        checks, decided = [], None
        for batch in range(batches):
            seen["batch"] = batch
            before = consensus.collectives
            answers = consensus.at_batch_end(_trainer(world), batch)
            if consensus.collectives > before:
                checks.append(batch)
            if answers["stop"] and decided is None:
                decided = batch
        results[rank] = {"checks": checks, "decided": decided, "every": consensus.every}

    threads = [threading.Thread(target=train, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(results) == {0, 1}, "a rank failed (a barrier timed out: the ranks disagreed)"
    assert results[0] == results[1]
    assert results[0]["every"] == 8
    checks = results[0]["checks"]
    assert checks[:3] == [0, 1, 9] and all(b - a == 8 for a, b in zip(checks[1:], checks[2:]))
    assert len(checks) <= 2 + batches // 8  # not one per batch
    assert turns_true <= results[0]["decided"] < turns_true + 8  # late by at most K batches


def test_both_callbacks_ask_one_consensus(tmp_path):
    checkpoint = KaggleModelCheckpoint(dirpath=str(tmp_path), train_time_interval="1s")
    checkpoint.consensus.ask(TIME_SAVE_DUE, checkpoint._time_save_due)  # what its setup does
    deadline = SessionDeadline(budget="01:00:00")
    deadline.setup(_trainer(2, callbacks=[deadline, checkpoint]), None, "fit")
    assert deadline._consensus is checkpoint.consensus
    assert set(checkpoint.consensus._questions) == {TIME_SAVE_DUE, SIGNAL_RECEIVED, DEADLINE_DUE}
    alone = SessionDeadline(budget="off", handle_signals=False)
    alone.setup(_trainer(2), None, "fit")
    assert alone._consensus._questions == {}  # nothing to agree on: no collective at all


def _probe_config(folder: Path) -> Path:
    path = folder / "probe.yaml"
    probe = {"class_path": "tests.support.consensus_probe.ConsensusProbe"}
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [probe]}}))
    return path


@pytest.mark.slow
def test_ddp_time_saves_and_a_signal_on_one_rank_stop_every_rank_at_the_same_step(tmp_path):
    """2-process CPU DDP: saves every 2 s and a SIGTERM sent to rank 1 only; both ranks save and stop together."""
    args = fit_args(
        *RESUME_FLAGS,
        *("--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "200"),
        *("--checkpoint.every_n_train_steps", "null", "--checkpoint.train_time_interval", "2s"),
        *("--checkpoint.every_n_epochs", "1000", "--config", str(_probe_config(tmp_path))),
    )
    process = start(args, tmp_path, cli_env(tmp_path / "home"), tmp_path / "output.txt")
    try:
        deadline = time.monotonic() + 150
        while not (tmp_path / "consensus-rank1.pid").exists() or _saves(tmp_path) < 3:
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "output.txt").read_text()
            time.sleep(0.1)
        os.kill(int((tmp_path / "consensus-rank1.pid").read_text()), signal.SIGTERM)
        assert process.wait(timeout=90) == 0, (tmp_path / "output.txt").read_text()[-3000:]
    finally:
        process.kill()
    reports = [json.loads((tmp_path / f"consensus-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["stopped_because"] == reports[1]["stopped_because"] == "signal"
    assert reports[0]["stopped_at"] == reports[1]["stopped_at"]
    assert reports[0]["saves"] == reports[1]["saves"] and len(reports[0]["saves"]) >= 3
    for report in reports:
        assert report["shared"] and report["every"] > 1
        assert report["collectives"] < report["batches"] / 2, report  # not one per step


def _saves(folder: Path) -> int:
    from lightning_app.persistence.folder import read_manifest

    manifest = read_manifest(folder / "checkpoints") if (folder / "checkpoints" / "manifest.json").exists() else None
    return len(manifest.entries) if manifest is not None else 0
