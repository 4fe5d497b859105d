"""The bounds with which the chain's calls follow the one retry policy (``lightning_app/persistence/retry.py``).

Only a `TransientError` (a network error, 408, 429, 5xx, a call that timed out) is tried again; a refusal, a
missing credential or a missing dataset is not. A push is tried again only after looking whether the attempt before
made its version (``pushing.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lightning_app.persistence.retry import retry_call

T = TypeVar("T")
#: Calls per operation, and the first and longest pause between them (seconds).
ATTEMPTS = 5
BASE_DELAY = 2.0
MAX_DELAY = 60.0


def retried(call: Callable[[], T], what: str, say: Callable[[str], None] = print) -> T:
    """``call()`` under the retry policy; each failed attempt is said in one line (``what``: the operation)."""

    def on_retry(attempt: int, delay: float, error: Exception) -> None:
        say(f"{what}: attempt {attempt} failed ({error}); trying again in {delay:.0f} s")

    return retry_call(call, attempts=ATTEMPTS, base_delay=BASE_DELAY, max_delay=MAX_DELAY, on_retry=on_retry)
