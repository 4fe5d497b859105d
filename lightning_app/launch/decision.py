"""What a session decides as its last act: the work is finished, the next session is pushed, or the chain stops.

Pure functions of what the session found; ``kernel_session.py`` gathers the facts (the published manifest, the stop
file, the weekly quota, the kernel's status) and acts.

1. The work is finished (``fit``: a published manifest entry with ``global_step == total_steps``; ``sweep``: exit
   0): record it and stop.
2. The command refused its input (exit 2), failed, or a ``fit`` published nothing new this session: stop, nothing
   pushed (another session would do the same again and spend quota on it).
3. ``launch --stop`` was asked after the chain was launched: stop.
4. On a GPU, the weekly quota left, less ``--keep_quota``, is less than a useful session needs (start-up plus one
   checkpoint interval, as measured in this session): pause until the quota refreshes.
5. Otherwise push the next version of the kernel, once, unless another run of it is queued or running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from lightning_app.launch.chain import StopRequest

#: ``SessionRecord.decided`` values.
PUSHED, FINISHED, QUOTA, STOPPED, FAILED, NONE = "pushed", "finished", "quota", "stopped", "failed", "none"
#: What a useful session needs before one has been measured: start-up plus one checkpoint interval.
DEFAULT_MINIMUM_SECONDS = 30 * 60.0


@dataclass(frozen=True)
class Decision:
    """What the session decided.

    Attributes:
        decided: one of `PUSHED`, `FINISHED`, `QUOTA`, `STOPPED`, `FAILED`, `NONE`.
        text: the words recorded in the chain's status.
        refreshes_at: a pause for quota: when the quota refreshes (ISO, UTC), when Kaggle said.
    """

    decided: str
    text: str
    refreshes_at: str | None = None


@dataclass(frozen=True)
class CommandOutcome:
    """How the session's command ended.

    Attributes:
        command: ``fit`` or ``sweep``.
        exit_code: its exit status (negative: killed by that signal).
        finished: the work is done (see the module's docstring).
        step_before: the furthest published step before this session (None: not known).
        step_after: the furthest published step after it (None: nothing published; always None for a sweep).
    """

    command: str
    exit_code: int
    finished: bool
    step_before: int | None = None
    step_after: int | None = None


def without_quota(outcome: CommandOutcome, stop: StopRequest | None, launched_at: float) -> Decision | None:
    """The decision when it does not depend on the quota or on the kernel's status; None: work remains, go on."""
    if outcome.finished:
        return Decision(FINISHED, "finished: nothing left to do")
    if outcome.exit_code == 2:
        return Decision(FAILED, f"nothing pushed: `{outcome.command}` refused its input (exit 2)")
    went_on = (0,) if outcome.command == "fit" else (0, 3)  # sweep: 3 = trials remain, every one stopped cleanly
    if outcome.exit_code not in went_on:
        how = f"killed by signal {-outcome.exit_code}" if outcome.exit_code < 0 else f"exit {outcome.exit_code}"
        return Decision(FAILED, f"nothing pushed: `{outcome.command}` failed ({how})")
    if outcome.command == "fit":
        if outcome.step_after is None:
            return Decision(FAILED, "nothing pushed: no checkpoint of the run is published")
        if outcome.step_before is not None and outcome.step_after <= outcome.step_before:
            return Decision(FAILED, f"nothing pushed: no progress in this session (step {outcome.step_after})")
    if stop is not None and stop.applies_to(launched_at):
        return Decision(STOPPED, f"nothing pushed: launch --stop at {utc(stop.requested_at)}")
    return None


def on_quota(
    left_seconds: float, keep_seconds: float, minimum_seconds: float, refreshes_at: datetime | None
) -> Decision | None:
    """A pause when the weekly GPU quota left, less what is kept, cannot hold a useful session; None: it can."""
    usable = left_seconds - keep_seconds
    if usable >= minimum_seconds:
        return None
    until = f"until {refreshes_at:%Y-%m-%d %H:%M} UTC" if refreshes_at is not None else "until the quota refreshes"
    kept = f" (less {span(keep_seconds)} kept by --keep_quota)" if keep_seconds else ""
    text = (
        f"paused {until}: {span(max(0.0, usable))} of weekly GPU quota left{kept}, a useful session needs "
        f"{span(minimum_seconds)}"
    )
    return Decision(QUOTA, text, refreshes_at.isoformat() if refreshes_at is not None else None)


def utc(epoch: float) -> str:
    """``2026-12-06 10:15 UTC``."""
    return f"{datetime.fromtimestamp(epoch, timezone.utc):%Y-%m-%d %H:%M} UTC"


def span(seconds: float) -> str:
    """``10.4 h``, ``45 min``, ``20 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
