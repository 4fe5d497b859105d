"""The one retry policy: which failures are tried again, and when. Every wait of the sync is decided here.

- A failed call (``TransientError`` only) is retried by `retry_call`, with capped exponential backoff and full
  jitter (`Backoff`), never sooner than the server's ``Retry-After``. ``AuthError``, ``RefusedError``,
  ``NotFoundError`` and every other error propagate at once: trying again cannot help.
- Waiting for the service (the previous version still processing, a new one not confirmed yet) is not a failure:
  its pauses grow by `POLL_GROWTH` up to a cap (`next_poll`), within a stated total bound.
- The ``kaggle`` client's own retry loop is switched off (``kaggle/client.py``): each call in a child process
  is one bounded attempt, and only this module decides whether there is another.

Every wait goes through an ``Event.wait`` that ``close()`` sets, so a shutting-down trainer is never held up by
a pause. The bounds, end to end, are in ``docs/ARCHITECTURE.md`` ("Retries and their bounds").

Example::

    stop = threading.Event()
    version = retry_call(lambda: store.publish(stage, "epoch 3"), stop=stop,
                         on_retry=lambda n, delay, err: log.warning("attempt %d failed (%s); retry in %.0f s",
                                                                    n, err, delay))
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from lightning_app.persistence.store import TransientError

T = TypeVar("T")
#: The longest ``Retry-After`` honoured (seconds).
_MAX_RETRY_AFTER = 3600.0
#: While waiting for the service, each pause is this much longer than the one before (up to a cap).
POLL_GROWTH = 1.5


def next_poll(pause: float, longest: float) -> float:
    """The pause after ``pause`` while waiting for the service to finish something: longer, at most ``longest``."""
    return min(pause * POLL_GROWTH, longest)


class Backoff:
    """Capped exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, min(max, base * 2**n))``.

    Full jitter spreads retries from many clients (or many failed calls) instead of bunching them.

    Args:
        base_delay: the cap of the first wait, in seconds.
        max_delay: no wait is longer than this.
        rng: the random source (seed one in tests).
    """

    def __init__(self, base_delay: float = 1.0, max_delay: float = 60.0, rng: random.Random | None = None) -> None:
        if base_delay < 0 or max_delay < 0:
            raise ValueError(f"delays must be >= 0; got base_delay={base_delay!r}, max_delay={max_delay!r}")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng or random.Random()

    def cap(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (0-based)."""
        # min() before the power would overflow for large attempts; 2**64 is plenty and stays a float.
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        """A jittered wait after failed attempt number ``attempt`` (0-based)."""
        return self.rng.uniform(0.0, self.cap(attempt))


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int = 8,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    stop: threading.Event | None = None,
    on_retry: Callable[[int, float, Exception], None] | None = None,
    rng: random.Random | None = None,
    deadline: float | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying only ``TransientError`` (never sooner than its ``retry_after``).

    ``AuthError``, ``NotFoundError`` and any other exception propagate at once: trying again cannot help.

    Args:
        fn: the call, with no arguments (wrap it in a lambda).
        attempts: how many calls at most (>= 1).
        base_delay: cap of the first backoff wait, in seconds.
        max_delay: cap of every backoff wait, in seconds.
        stop: when set (before or during a wait), the last error is raised at once.
        on_retry: called as ``on_retry(failed_attempt, delay, error)`` before each wait (attempts count from 1).
        rng: random source of the jitter.
        deadline: a ``time.monotonic()`` after which no attempt starts: a wait (or a ``Retry-After``) that would
            end past it raises the last error at once.

    Returns:
        What ``fn`` returned.

    Raises:
        TransientError: the last one, when every attempt failed, ``stop`` was set or the deadline would pass.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1; got {attempts!r}")
    backoff = Backoff(base_delay, max_delay, rng)
    wait = (stop or threading.Event()).wait
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientError as error:
            if attempt == attempts or (stop is not None and stop.is_set()):
                raise
            delay = max(backoff.delay(attempt - 1), min(error.retry_after or 0.0, _MAX_RETRY_AFTER))
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise
            if on_retry is not None:
                on_retry(attempt, delay, error)
            if wait(delay):
                raise
    raise AssertionError("unreachable")  # the loop always returns or raises
