"""SessionDeadline and the session's budget: who asks the weekly GPU quota, what the start line says, and every DDP
rank stopping when the earliest deadline (rank 0's quota) comes, though only rank 0 knows it."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

from callbacks import deadline as deadline_module
from callbacks.deadline import DEADLINE_DUE, SessionDeadline
from callbacks.step_consensus import StepConsensus
from lightning_app import session
from lightning_app.errors import ConfigError
from tests.callbacks.test_step_consensus import Clock, ThreadRanks
from tests.test_session import HOUR, NOW, Quota, Reader


def _trainer(rank: int = 0, accelerator=None, world_size: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        world_size=world_size,
        current_epoch=0,
        is_global_zero=rank == 0,
        accelerator=CUDAAccelerator() if accelerator is None else accelerator,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        callbacks=[],
        checkpoint_callbacks=[],
    )


@pytest.fixture
def quota(monkeypatch) -> Reader:
    """A Kaggle notebook with credentials, whose quota reader (the persistence layer's) answers 3 h left."""
    reader = Reader(Quota(used_seconds=27 * HOUR, allowed_seconds=30 * HOUR))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.delenv(session.SESSION_START_VARIABLE, raising=False)
    monkeypatch.setattr(deadline_module, "read_weekly_gpu_quota", reader)
    monkeypatch.setattr(deadline_module, "find_kaggle_credentials", lambda: object())
    return reader


def test_rank_zero_of_a_gpu_fit_asks_the_quota(quota):
    deadline = SessionDeadline(budget="05:00:00", handle_signals=False)
    deadline.setup(_trainer(rank=0), None, "fit")
    assert quota.calls == 1
    assert deadline.remaining_seconds() == pytest.approx(3 * HOUR - session.KAGGLE_MARGIN_SECONDS, abs=60)
    assert deadline.budget_line.endswith("; GPU quota 3 h, quota_view)")


@pytest.mark.parametrize(
    ("rank", "accelerator", "stage", "budget"),
    [
        (1, None, "fit", "05:00:00"),
        (0, CPUAccelerator(), "fit", "05:00:00"),
        (0, None, "validate", "05:00:00"),
        (0, None, "fit", "off"),
    ],
    ids=["rank 1", "cpu", "validate", "no budget"],
)
def test_nobody_else_asks_the_quota(quota, rank, accelerator, stage, budget):
    deadline = SessionDeadline(budget=budget, handle_signals=False)
    deadline.setup(_trainer(rank, accelerator), None, stage)
    assert quota.calls == 0


def test_auto_inside_kaggle_is_on_and_outside_off(monkeypatch):
    monkeypatch.delenv(session.SESSION_START_VARIABLE, raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert SessionDeadline(budget="auto").remaining_seconds() is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    inside = SessionDeadline(budget="auto")
    assert inside.remaining_seconds() <= 11.5 * HOUR  # 12 h from the container's (or the process's) start
    assert inside.budget_line.startswith("Session budget: ") and "12 h session from " in inside.budget_line


def test_a_bad_session_start_refuses_the_callback(monkeypatch):
    monkeypatch.setenv(session.SESSION_START_VARIABLE, "1767253200000")  # milliseconds
    with pytest.raises(ConfigError, match="^LIGHTNING_APP_SESSION_START: got '1767253200000'; expected"):
        SessionDeadline(budget="auto")


def test_the_budget_is_the_start_lines_and_enough_time_left_adds_no_line(quota, caplog):
    deadline = SessionDeadline(budget="05:00:00", handle_signals=False)
    trainer = _trainer()
    deadline.setup(trainer, None, "fit")
    with caplog.at_level(logging.INFO, logger="lightning_app.deadline"):
        deadline.on_train_start(trainer, torch.nn.Linear(4, 4))
    assert not caplog.records  # the CLI's start line ends with `budget_line`
    assert deadline.budget_line.startswith("Session budget: 2.5 h left (5 h from ")


def test_too_little_left_is_a_warning_with_the_budget(quota, caplog, monkeypatch):
    monkeypatch.setattr(deadline_module, "read_weekly_gpu_quota", Reader(Quota(30 * HOUR - 60, 30 * HOUR)))
    deadline = SessionDeadline(budget="05:00:00", handle_signals=False)
    trainer = _trainer()
    deadline.setup(trainer, None, "fit")
    with caplog.at_level(logging.INFO, logger="lightning_app.deadline"):
        deadline.on_train_start(trainer, torch.nn.Linear(4, 4))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("Session budget: 0 s left (5 h from ")
    assert "GPU quota 1 min, quota_view): less than the ~" in record.getMessage()


def test_every_rank_stops_at_rank_zeros_quota(quota, tmp_path):
    """Two ranks as threads, agreeing through `StepConsensus` as under DDP: only rank 0 read the quota (it ends
    after about 10 batches of 10 s); rank 1's own budget is 5 h. Both see the deadline at the same batch."""
    world, batches = 2, 40
    ranks = ThreadRanks(world)
    decided: dict[int, int | None] = {}
    seconds = {0: 0.0, 1: 0.0}
    margin = session.KAGGLE_MARGIN_SECONDS
    quota.answer = Quota(used_seconds=30 * HOUR - (margin + 100), allowed_seconds=30 * HOUR)

    deadlines = []
    for rank in range(world):
        deadline = SessionDeadline(budget="05:00:00", reserve="1s", handle_signals=False)
        # The budget on a faked clock: the wall and monotonic clocks move with this rank's batches.
        proc = session.ProcFiles(tmp_path, 100, lambda: None, lambda rank=rank: NOW + seconds[rank])
        deadline.budget = session.SessionBudget(
            "05:00:00",
            env={"KAGGLE_KERNEL_RUN_TYPE": "Batch", session.SESSION_START_VARIABLE: str(NOW)},
            proc=proc,
            monotonic_clock=lambda rank=rank: seconds[rank],
        )
        deadline._consensus = StepConsensus(all_reduce=ranks.all_reduce(rank), clock=Clock(0.25))
        deadline.setup(_trainer(rank, world_size=world), None, "fit")
        deadlines.append(deadline)
    assert quota.calls == 1
    assert deadlines[0].remaining_seconds() == pytest.approx(100)
    assert deadlines[1].remaining_seconds() == pytest.approx(5 * HOUR)

    def train(rank: int) -> None:
        trainer = _trainer(rank, world_size=world)
        for batch in range(batches):
            seconds[rank] = 10.0 * batch
            if deadlines[rank]._consensus.at_batch_end(trainer, batch)[DEADLINE_DUE]:
                decided[rank] = batch
                return
        decided[rank] = None

    threads = [threading.Thread(target=train, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(decided) == {0, 1}, "a rank failed (a barrier timed out: the ranks disagreed)"
    assert decided[0] == decided[1] is not None
    assert 10 <= decided[0] <= 10 + 8  # due from batch 10 (100 s); agreed at the next check (K = 8)


def test_a_signal_that_arrives_twice_together_is_one_request(monkeypatch):
    """A sweep passes its SIGTERM on to a trial that the process group's signal reached too: one request, not the
    second signal that exits at once; a second one later still does."""
    import callbacks.deadline as deadline_module

    clock = [100.0]
    monkeypatch.setattr(deadline_module.time, "monotonic", lambda: clock[0])
    exits = []
    monkeypatch.setattr(deadline_module.os, "_exit", exits.append)
    deadline = SessionDeadline(budget="off")
    deadline._on_signal(15, None)
    clock[0] += 0.05
    deadline._on_signal(15, None)  # the group's and the sweep's, together
    assert deadline._signals == 1 and exits == []
    clock[0] += deadline_module.SAME_SIGNAL_SECONDS
    deadline._on_signal(15, None)
    assert exits == [128 + 15]
