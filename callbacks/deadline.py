"""SessionDeadline: stop cleanly, checkpoint published, before the session's time runs out or on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytorch_lightning as pl
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from callbacks.kaggle_sync import KaggleDatasetSync
from callbacks.step_consensus import StepConsensus
from lightning_app.durations import parse_duration
from lightning_app.errors import bad_value
from lightning_app.session import SessionBudget

log = logging.getLogger("lightning_app.deadline")

#: Until an upload is measured, assume this rate (bytes/s) for the first one.
ASSUMED_UPLOAD_RATE = 10e6


def assumed_publish_seconds(state_bytes: int) -> float:
    """What publishing a checkpoint of ``state_bytes`` is assumed to take until an upload is measured."""
    return 5.0 + state_bytes / ASSUMED_UPLOAD_RATE


#: The `StepConsensus` questions of this callback.
SIGNAL_RECEIVED, DEADLINE_DUE = "signal_received", "deadline_due"
_RESUME_HINT = "Resume with the same command plus --resume (in a new session, with or without the dataset attached)."
#: A signal repeated within this many seconds is the same request: a process group's signal and a parent's
#: forwarding of it (a sweep passing its SIGTERM on to its trials) arrive together.
SAME_SIGNAL_SECONDS = 2.0


def read_weekly_gpu_quota():
    """The weekly GPU quota, through the Kaggle client (``persistence/kaggle/quota.py``), imported only when asked."""
    from lightning_app.persistence.kaggle.quota import read_gpu_quota

    return read_gpu_quota()


def find_kaggle_credentials():
    from lightning_app.persistence.kaggle.credentials import find_credentials

    return find_credentials()


class SessionDeadline(Callback):
    """Ends training before the session does, with a published checkpoint; handles SIGTERM and SIGINT alike.

    The budget is per session (unlike Lightning's `Timer`, nothing is carried over from the checkpoint):
    `lightning_app.session.SessionBudget` says when it ends, from the session's start and, on a Kaggle GPU, the
    weekly GPU quota (asked by rank 0 only, in ``setup``; the ranks agree on stopping as on everything else, the
    earliest deadline of any rank winning). The callback measures how long a checkpoint plus its upload take in
    this run and how long a step takes; when what is left falls below that (with a safety factor), it saves a
    mid-epoch checkpoint, waits for it to be published and stops training, so ``fit`` returns normally.

    A first SIGTERM or SIGINT does the same at the next step boundary, waiting at most ``signal_timeout`` for
    the upload; a second one (more than `SAME_SIGNAL_SECONDS` later) exits at once. Under DDP every rank stops at
    the same step: the ranks agree through the checkpoint callback's `StepConsensus` (their own one without it), one
    small all-reduce every couple of seconds shared with the time-based saves, rather than a collective per step.

    Args:
        budget: time this session may train, e.g. ``05:00:00``, counted from ``LIGHTNING_APP_SESSION_START``
            (epoch seconds) when set, else from the process's start; ``auto``: inside a Kaggle notebook
            (``KAGGLE_KERNEL_RUN_TYPE`` is set) the 12 hours from the session's start (the container's first
            process) less half an hour, no limit elsewhere; ``off``: no limit. On a Kaggle notebook's GPU the
            weekly GPU quota left may end it sooner.
        safety: multiply the measured checkpoint-and-upload time by this before comparing it with what is left.
        reserve: time kept back for everything after the last upload (validation, teardown, exit).
        signal_timeout: after SIGTERM/SIGINT, how long to wait for the checkpoint's upload before exiting.
        handle_signals: save and stop on SIGTERM/SIGINT (else Lightning's own handling applies).
    """

    def __init__(
        self,
        budget: str = "auto",
        safety: float = 2.0,
        reserve: str = "60s",
        signal_timeout: str = "60s",
        handle_signals: bool = True,
    ) -> None:
        self.budget = SessionBudget(budget)
        if not safety >= 1:
            raise bad_value("--deadline.safety", safety, "a number >= 1")
        self.safety = safety
        self.reserve = parse_duration("--deadline.reserve", reserve).total_seconds()
        self.signal_timeout = parse_duration("--deadline.signal_timeout", signal_timeout).total_seconds()
        self.handle_signals = handle_signals
        self.stopped_because: str | None = None
        self._signals = 0
        self._first_signal_at = 0.0
        self._stopped: tuple[str, float] | None = None  # why and how long to wait: said once training has ended
        self._consensus = StepConsensus()
        self._save_seconds = 0.0  # the slowest checkpoint write seen in this run
        self._state_bytes = 0  # weights + AdamW moments: about what one checkpoint uploads
        self._previous_handlers: dict[int, object] = {}
        self._checkpoint: KaggleModelCheckpoint | None = None
        self._sync: KaggleDatasetSync | None = None

    def remaining_seconds(self) -> float | None:
        """Seconds of this session's budget left; None without a budget."""
        return self.budget.remaining_seconds()

    @property
    def budget_line(self) -> str | None:
        """The start line's fragment: ``Session budget: 10.4 h left (12 h session from 08:14 UTC, /proc/1; GPU
        quota 21.3 h, quota_view)``; None without a budget. Complete after ``setup`` (the quota is asked there)."""
        return self.budget.describe()

    def needed_seconds(self) -> float:
        """What stopping cleanly costs now: a checkpoint, its upload, and a couple of steps to get there (plus,
        under DDP, the seconds until the ranks next agree)."""
        publish = (
            self._sync.publish_seconds(assumed_publish_seconds(self._state_bytes)) if self._sync is not None else 0.0
        )
        steps = 2 * self._consensus.step_seconds + self._consensus.lateness_seconds
        return self.safety * (self._save_seconds + publish) + steps + self.reserve

    def _out_of_time(self) -> bool:
        remaining = self.remaining_seconds()
        return remaining is not None and remaining <= self.needed_seconds()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._checkpoint = next(
            (cb for cb in trainer.checkpoint_callbacks if isinstance(cb, KaggleModelCheckpoint)), None
        )
        self._sync = next((cb for cb in trainer.callbacks if isinstance(cb, KaggleDatasetSync)), None)
        if self._checkpoint is not None:
            self._checkpoint.add_listener(self._learn_save_time)
        # With the checkpoint callback, its consensus: one collective per check for both callbacks.
        self._consensus = self._checkpoint.consensus if self._checkpoint is not None else self._consensus
        if self.handle_signals:
            self._consensus.ask(SIGNAL_RECEIVED, lambda: self._signals > 0)
        if self.budget.enabled:
            self._consensus.ask(DEADLINE_DUE, self._out_of_time)
        on_gpu = stage == "fit" and self.budget.quota_matters and isinstance(trainer.accelerator, CUDAAccelerator)
        if on_gpu and trainer.is_global_zero:
            self.consider_gpu_quota()  # rank 0 only: every rank stops when it does

    def consider_gpu_quota(self) -> None:
        """Add the weekly GPU quota left to the budget, read through the Kaggle client (once; see `SessionBudget`)."""
        from lightning_app.persistence.kaggle.credentials import redact_secrets

        self.budget.consider_gpu_quota(read_weekly_gpu_quota, find_kaggle_credentials, redact_secrets)

    def _learn_save_time(self, saved: SavedCheckpoint) -> None:
        self._save_seconds = max(self._save_seconds, saved.seconds + self._checkpoint.last_blocked_seconds)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._state_bytes = 3 * sum(p.numel() * p.element_size() for p in pl_module.parameters())
        remaining = self.remaining_seconds()
        if remaining is not None and trainer.is_global_zero:
            needed = self.needed_seconds()
            if remaining <= needed:  # the budget itself is in the start line
                log.warning(
                    f"{self.budget_line}: less than the ~{needed:.0f} s a checkpoint and its upload are expected "
                    "to take; this session may end with nothing published"
                )
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        if self._signals and time.monotonic() - self._first_signal_at < SAME_SIGNAL_SECONDS:
            return  # the same request, delivered twice (to the process group, and forwarded by a parent)
        self._signals += 1
        self._first_signal_at = self._first_signal_at or time.monotonic()
        if self._signals > 1:
            log.warning(f"Second {signal.Signals(signum).name}: exiting now")
            os._exit(128 + signum)
        log.warning(
            f"{signal.Signals(signum).name} received: saving a checkpoint at the next step and publishing it "
            f"(at most {self.signal_timeout:.0f} s); send it again to exit at once"
        )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        answers = self._consensus.at_batch_end(trainer, batch_idx)  # the same on every rank
        if self.stopped_because is not None:
            return
        reason = "signal" if answers.get(SIGNAL_RECEIVED) else ("budget" if answers.get(DEADLINE_DUE) else None)
        if reason is not None:
            self._stop(trainer, reason)

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        self.stopped_because = reason
        trainer.should_stop = True
        saved_now = self._checkpoint.save_at_step_boundary(trainer) if self._checkpoint is not None else False
        if not trainer.is_global_zero:
            return
        wait = self.signal_timeout if reason == "signal" else max(1.0, (self.remaining_seconds() or 0) - 1.0)
        why = "on a signal" if reason == "signal" else "to stay within the session budget"
        if self._sync is not None:
            self._sync.limit_flush(wait)
        if not saved_now and self._checkpoint is not None:  # the last batch: saved and flushed at the epoch's end
            log.warning(f"Stopping after this epoch {why}. {_RESUME_HINT}")
            return
        # Published once training has ended (`on_train_end`): this step's row is logged after this hook, and the
        # version carries the rows logged before the checkpoint's step.
        self._stopped = (why, time.monotonic() + wait)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopped is None or not trainer.is_global_zero:
            return
        (why, until), self._stopped = self._stopped, None
        wait = max(1.0, until - time.monotonic())
        published = self._sync.flush(wait) if self._sync is not None else False
        if self._checkpoint is not None:
            self._checkpoint.wait_for_writes(wait)
        if self._checkpoint is not None and self._checkpoint.last_saved is not None:
            saved = self._checkpoint.last_saved.entry.file
            state = "published" if published and self._sync.publishing else "saved locally"
            log.warning(f"Stopped at step {trainer.global_step} {why}: {saved} {state}. {_RESUME_HINT}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
