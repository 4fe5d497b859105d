"""What a session decides at its end, for a ``fit`` and a ``sweep`` (pure: no Kaggle)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lightning_app.launch.chain import StopRequest
from lightning_app.launch.decision import FAILED, FINISHED, QUOTA, STOPPED, CommandOutcome, on_quota, without_quota

LAUNCHED = 1_800_000_000.0


@pytest.mark.parametrize(
    ("outcome", "decided", "words"),
    [
        (CommandOutcome("fit", 0, True, 70, 96), FINISHED, "finished"),
        (CommandOutcome("fit", 0, False, 35, 70), None, ""),
        (CommandOutcome("fit", 0, False, None, 35), None, ""),  # the first session: nothing known before it
        (CommandOutcome("fit", 0, False, 70, 70), FAILED, "no progress in this session (step 70)"),
        (CommandOutcome("fit", 0, False, None, None), FAILED, "no checkpoint of the run is published"),
        (CommandOutcome("fit", 2, False, 35, 35), FAILED, "`fit` refused its input (exit 2)"),
        (CommandOutcome("fit", 1, False, 35, 40), FAILED, "`fit` failed (exit 1)"),
        (CommandOutcome("fit", -9, False, 35, 40), FAILED, "`fit` failed (killed by signal 9)"),
        (CommandOutcome("sweep", 0, True), FINISHED, "finished"),
        (CommandOutcome("sweep", 3, False), None, ""),  # trials remain, every one stopped cleanly
        (CommandOutcome("sweep", 2, False), FAILED, "`sweep` refused its input (exit 2)"),
        (CommandOutcome("sweep", 1, False), FAILED, "`sweep` failed (exit 1)"),
    ],
)
def test_without_quota(outcome, decided, words):
    decision = without_quota(outcome, None, LAUNCHED)
    assert (decision.decided if decision else None) == decided
    assert decision is None or words in decision.text


def test_a_stop_asked_after_the_launch_stops_the_chain_and_a_new_launch_starts_it_again():
    stop = StopRequest(LAUNCHED + 60)
    work_remains = CommandOutcome("fit", 0, False, 35, 70)
    decision = without_quota(work_remains, stop, LAUNCHED)
    assert decision.decided == STOPPED and "launch --stop at" in decision.text
    assert without_quota(work_remains, stop, LAUNCHED + 120) is None
    assert without_quota(CommandOutcome("fit", 0, True, 70, 96), stop, LAUNCHED).decided == FINISHED


def test_the_quota_left_must_hold_a_useful_session():
    refresh = datetime(2026, 12, 19, tzinfo=timezone.utc)
    assert on_quota(3 * 3600, 0, 1800, refresh) is None
    kept = on_quota(3 * 3600, 2.75 * 3600, 1800, refresh)  # 15 min left once --keep_quota is kept back
    assert kept.decided == QUOTA and kept.refreshes_at == refresh.isoformat()
    assert kept.text == (
        "paused until 2026-12-19 00:00 UTC: 15 min of weekly GPU quota left (less 2.8 h kept by --keep_quota), a "
        "useful session needs 30 min"
    )
    assert "until the quota refreshes" in on_quota(0, 0, 60, None).text
