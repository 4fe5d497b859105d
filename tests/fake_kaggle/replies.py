"""What an RPC or a download answers, before the HTTP plumbing (``handler.py``) sends it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple


class Reply(NamedTuple):
    """An answer: JSON ``body``, or ``raw`` bytes (a zip, a file) sent with ``headers``."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = {}
    raw: bytes | None = None


def error(status: int, message: str) -> Reply:
    """The error shape kagglesdk turns into ``requests.HTTPError(message)``."""
    return Reply(status, {"code": status, "message": message})


def iso(timestamp: float) -> str:
    """A protobuf JSON Timestamp (RFC 3339, UTC, ``Z``) with milliseconds."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
