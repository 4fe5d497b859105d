"""StepConsensus: the yes/no decisions every DDP rank must take at the same step (a time-based save, the deadline,
a signal), agreed with one small all-reduce every K steps instead of collectives at every step."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.distributed as dist

#: Under DDP a decision comes at most about this long after its condition turned true on some rank.
MAX_LATENESS_SECONDS = 2.0


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """The one collective: element-wise max over all ranks, in place."""
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


class StepConsensus:
    """Local questions ("is a time-based save due?", "did a signal come?") answered alike on every rank.

    Callbacks register their questions with `ask` (in ``setup``: the same ones, in the same order, on every rank)
    and call `at_batch_end` first thing in ``on_train_batch_end``. The first call of a batch asks the questions; a
    later call in the same batch (the other callback) gets the same answers, so several callbacks share one
    collective.

    On one process the answers are the local ones, at every batch. Under DDP the ranks agree every K batches with
    one all-reduce (max) of ``[answer, ..., seconds per batch]``: an answer is yes when it is yes on any rank, and
    K = max(1, floor(``max_lateness`` / the slowest rank's seconds per batch)) comes from the reduced values, so
    every rank computes the same K and checks again at the same batch. Between checks every answer is no: a
    condition that turned true (they stay true until acted on) is acted on at most K batches, about
    ``max_lateness`` seconds, later (`lateness_seconds`).
    """

    def __init__(
        self,
        max_lateness: float = MAX_LATENESS_SECONDS,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] = all_reduce_max,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lateness = max_lateness
        self._all_reduce = all_reduce
        self._clock = clock
        self._questions: dict[str, Callable[[], bool]] = {}
        self._answers: dict[str, bool] = {}
        self._batch: tuple[int, int] | None = None
        self._last_batch_end: float | None = None
        self.batches = 0  # batches seen in this process: the same count on every rank
        self.next_check = 1  # the batch count at which the ranks agree next
        self.every = 1  # K
        self.step_seconds = 0.0  # this rank's smoothed seconds per batch
        self.distributed = False
        self.collectives = 0

    def ask(self, name: str, question: Callable[[], bool]) -> None:
        """Answer ``question`` (a cheap local check) at every check; `at_batch_end` returns it under ``name``."""
        self._questions[name] = question

    @property
    def lateness_seconds(self) -> float:
        """How long after its condition a decision may come: 0 on one process, about K batches under DDP."""
        return self.every * self.step_seconds if self.distributed else 0.0

    def at_batch_end(self, trainer: pl.Trainer, batch_idx: int) -> dict[str, bool]:
        """The agreed answers for this training batch (all no between checks under DDP)."""
        batch = (trainer.current_epoch, batch_idx)
        if batch == self._batch:
            return self._answers
        self._batch = batch
        self._time_batch()
        self.batches += 1
        self.distributed = trainer.world_size > 1
        if not self.distributed:
            self._answers = {name: bool(question()) for name, question in self._questions.items()}
        elif self._questions and self.batches >= self.next_check:
            self._answers = self._agree(trainer.strategy.root_device)
        else:
            self._answers = dict.fromkeys(self._questions, False)
        return self._answers

    def _time_batch(self) -> None:
        now = self._clock()
        if self._last_batch_end is not None:
            step = now - self._last_batch_end
            self.step_seconds = step if self.step_seconds == 0 else 0.9 * self.step_seconds + 0.1 * step
        self._last_batch_end = now

    def _agree(self, device: torch.device) -> dict[str, bool]:
        local = [float(bool(question())) for question in self._questions.values()]
        values = torch.tensor([*local, self.step_seconds], dtype=torch.float32, device=device)
        *answers, slowest = self._all_reduce(values).tolist()
        self.collectives += 1
        self.every = every_for(slowest, self.max_lateness)
        self.next_check = self.batches + self.every
        return {name: answer > 0 for name, answer in zip(self._questions, answers)}


def every_for(step_seconds: float, max_lateness: float = MAX_LATENESS_SECONDS) -> int:
    """K: how many batches fit in ``max_lateness`` at ``step_seconds`` each (1 until a step is measured)."""
    if not step_seconds > 0:
        return 1
    return max(1, int(max_lateness / step_seconds))
