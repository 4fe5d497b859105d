"""Fault injection for the fake Kaggle server: fail, hang, drop or cut off the next N matching requests.

A fault matches a request by RPC name (``"CreateDatasetVersion"``) or HTTP method (``"PUT"`` for blob uploads,
``"GET"`` for zip downloads, ``"POST"`` for every RPC); ``methods=None`` matches everything. Faults queue in the
order they were added, and each request consumes at most one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class Fault:
    """What to do to the next ``remaining`` matching requests.

    Attributes:
        action: ``"fail"`` (answer ``status``), ``"hang"`` (hold until released, then drop), ``"drop"`` (close
            the socket with no response) or ``"cut"`` (send the headers and half the body, then close).
        remaining: how many more requests it applies to.
        methods: RPC names or HTTP methods it matches; None for all.
        status: the HTTP status of a ``"fail"``.
        message: the error message of a ``"fail"``.
        after_commit: do the request's work first, then fail/hang/drop the reply (a "lost reply").
        retry_after: seconds sent as ``Retry-After`` with a ``"fail"`` (a 429 then has the RESOURCE_EXHAUSTED shape).
    """

    action: str
    remaining: int
    methods: frozenset[str] | None = None
    status: int = 500
    message: str = ""
    after_commit: bool = False
    retry_after: float | None = None

    def matches(self, names: set[str]) -> bool:
        return self.remaining > 0 and (self.methods is None or bool(self.methods & names))


def as_methods(methods: str | Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    return frozenset([methods] if isinstance(methods, str) else methods)


class FaultPlan:
    """Thread-safe queue of faults, plus the event that releases hung requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._release = threading.Event()
        self._held = 0

    def add(self, fault: Fault) -> None:
        if fault.remaining < 0:
            raise ValueError(f"n must be >= 0; got {fault.remaining}")
        if fault.action not in ("fail", "hang", "drop", "cut"):
            raise ValueError(f"unknown fault action {fault.action!r}")
        with self._lock:
            self._faults.append(fault)

    def take(self, names: set[str]) -> Fault | None:
        """Consume one application of the first queued fault that matches ``names``."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(names):
                    fault.remaining -= 1
                    return fault
            return None

    def pending(self) -> int:
        """How many fault applications are still queued."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def hold(self, limit: float) -> None:
        """Block a hung request until ``release()`` (or ``limit`` seconds, so nothing waits forever)."""
        with self._lock:
            event = self._release
            self._held += 1
        try:
            event.wait(limit)
        finally:
            with self._lock:
                self._held -= 1

    def holding(self) -> int:
        """How many hung requests are being held right now (not yet released nor past their limit)."""
        with self._lock:
            return self._held

    def release(self) -> None:
        """Let every request hung so far go (to be dropped); later hangs hang again."""
        with self._lock:
            event, self._release = self._release, threading.Event()
        event.set()
