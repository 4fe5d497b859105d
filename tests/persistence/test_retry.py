"""The retry policy: only TransientError is retried, with capped, jittered, interruptible backoff."""

from __future__ import annotations

import random
import threading
import time

import pytest

from lightning_app.persistence.retry import Backoff, retry_call
from lightning_app.persistence.store import AuthError, NotFoundError, StoreError, TransientError


class Flaky:
    """Raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retries_transient_errors_until_success():
    fn = Flaky(TransientError("a"), TransientError("b"))
    seen = []
    result = retry_call(fn, base_delay=0.001, max_delay=0.002, rng=random.Random(0), on_retry=lambda *a: seen.append(a))
    assert result == "done" and fn.calls == 3
    assert [(n, str(e)) for n, _, e in seen] == [(1, "a"), (2, "b")]
    assert all(0 <= delay <= 0.002 for _, delay, _ in seen)


def test_gives_up_after_attempts_with_the_last_error():
    fn = Flaky(*(TransientError(str(i)) for i in range(5)))
    with pytest.raises(TransientError, match="^2$"):
        retry_call(fn, attempts=3, base_delay=0.001, rng=random.Random(0))
    assert fn.calls == 3


@pytest.mark.parametrize("error", [AuthError("key"), NotFoundError("none"), StoreError("bad"), ValueError("bug")])
def test_other_errors_propagate_at_once(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        retry_call(fn, base_delay=0.001)
    assert fn.calls == 1


def test_a_set_stop_raises_at_once():
    stop = threading.Event()
    stop.set()
    fn = Flaky(TransientError("x"), TransientError("y"))
    with pytest.raises(TransientError, match="x"):
        retry_call(fn, base_delay=10.0, stop=stop)
    assert fn.calls == 1


def test_stop_interrupts_a_wait():
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    fn = Flaky(TransientError("x"), TransientError("y"))
    start = time.monotonic()
    with pytest.raises(TransientError, match="x"):
        retry_call(fn, base_delay=30.0, max_delay=30.0, stop=stop, rng=random.Random(3))
    assert time.monotonic() - start < 5 and fn.calls == 1


def test_backoff_is_capped_exponential_with_full_jitter():
    backoff = Backoff(base_delay=1.0, max_delay=10.0, rng=random.Random(42))
    assert [backoff.cap(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff.cap(10_000) == 10.0  # no overflow
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0 <= d <= 8 for d in delays) and max(delays) > 6 and min(delays) < 2
    assert Backoff(rng=random.Random(7)).delay(2) == Backoff(rng=random.Random(7)).delay(2)


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        retry_call(lambda: None, attempts=0)
    with pytest.raises(ValueError):
        Backoff(base_delay=-1)
