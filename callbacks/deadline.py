"""SessionDeadline: stop cleanly, checkpoint published, before the session's time runs out or on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

import lightning_app
from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint
from callbacks.kaggle_sync import KaggleDatasetSync
from callbacks.step_consensus import StepConsensus
from lightning_app.durations import parse_duration
from lightning_app.errors import bad_value

log = logging.getLogger("lightning_app.deadline")

#: Kaggle ends CPU/GPU sessions at 12 h; leave half an hour for the restore, the upload and surprises.
KAGGLE_DEFAULT_BUDGET = "11:30:00"
#: Until an upload is measured, assume this rate (bytes/s) for the first one.
ASSUMED_UPLOAD_RATE = 10e6
#: The `StepConsensus` questions of this callback.
SIGNAL_RECEIVED, DEADLINE_DUE = "signal_received", "deadline_due"
_RESUME_HINT = "Resume with the same command plus --resume (in a new session, with or without the dataset attached)."


class SessionDeadline(Callback):
    """Ends training before the session does, with a published checkpoint; handles SIGTERM and SIGINT alike.

    The budget is per session, counted from process start (unlike Lightning's `Timer`, nothing is carried over
    from the checkpoint). The callback measures how long a checkpoint plus its upload take in this run and how
    long a step takes; when what is left falls below that (with a safety factor), it saves a mid-epoch
    checkpoint, waits for it to be published and stops training, so ``fit`` returns normally.

    A first SIGTERM or SIGINT does the same at the next step boundary, waiting at most ``signal_timeout`` for
    the upload; a second one exits at once. Under DDP every rank stops at the same step: the ranks agree through
    the checkpoint callback's `StepConsensus` (their own one without it), one small all-reduce every couple of
    seconds shared with the time-based saves, rather than a collective per step.

    Args:
        budget: time this session may train, e.g. ``11:30:00``; ``auto`` is 11:30:00 inside a Kaggle notebook
            (``KAGGLE_KERNEL_RUN_TYPE`` is set) and no limit elsewhere; ``off`` is no limit.
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
        if budget == "auto":
            budget = KAGGLE_DEFAULT_BUDGET if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else "off"
        self.budget_seconds = None if budget == "off" else parse_duration("--deadline.budget", budget).total_seconds()
        if not safety >= 1:
            raise bad_value("--deadline.safety", safety, "a number >= 1")
        self.safety = safety
        self.reserve = parse_duration("--deadline.reserve", reserve).total_seconds()
        self.signal_timeout = parse_duration("--deadline.signal_timeout", signal_timeout).total_seconds()
        self.handle_signals = handle_signals
        self.stopped_because: str | None = None
        self._signals = 0
        self._consensus = StepConsensus()
        self._save_seconds = 0.0  # the slowest checkpoint write seen in this run
        self._state_bytes = 0  # weights + AdamW moments: about what one checkpoint uploads
        self._previous_handlers: dict[int, object] = {}
        self._checkpoint: KaggleModelCheckpoint | None = None
        self._sync: KaggleDatasetSync | None = None

    def remaining_seconds(self) -> float | None:
        """Seconds of this session's budget left; None without a budget."""
        if self.budget_seconds is None:
            return None
        return self.budget_seconds - (time.monotonic() - lightning_app.PROCESS_START)

    def needed_seconds(self) -> float:
        """What stopping cleanly costs now: a checkpoint, its upload, and a couple of steps to get there (plus,
        under DDP, the seconds until the ranks next agree)."""
        assumed = 5.0 + self._state_bytes / ASSUMED_UPLOAD_RATE  # until an upload is measured
        publish = self._sync.publish_seconds(assumed) if self._sync is not None else 0.0
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
        if self.budget_seconds is not None:
            self._consensus.ask(DEADLINE_DUE, self._out_of_time)

    def _learn_save_time(self, saved: SavedCheckpoint) -> None:
        self._save_seconds = max(self._save_seconds, saved.seconds + self._checkpoint.last_blocked_seconds)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._state_bytes = 3 * sum(p.numel() * p.element_size() for p in pl_module.parameters())
        remaining = self.remaining_seconds()
        if remaining is not None and trainer.is_global_zero:
            needed = self.needed_seconds()
            if remaining <= needed:
                log.warning(
                    f"The session budget leaves {remaining:.0f} s, less than the ~{needed:.0f} s a checkpoint and "
                    "its upload are expected to take: this session may end with nothing published"
                )
            else:
                log.info(f"Session budget: {remaining / 3600:.2f} h left; training stops in time to publish")
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
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
