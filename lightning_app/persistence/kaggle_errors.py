"""How the child process reads the ``kaggle`` client's failures: a kind the parent acts on, and a message.

Kinds: ``auth`` (the credential was refused, or there is none), ``transient`` (a network error, 408, 429, 5xx:
retried), ``not_found``, ``refused`` (permission or a name the service will not take: never retried), ``error``.
Both client generations are read: ``requests.HTTPError`` (kaggle >= 1.7) and ``ApiException`` (kaggle 1.6).
"""

from __future__ import annotations

from typing import Any

from lightning_app.persistence.credentials import redact_secrets

_NO_CREDENTIALS = (
    "no Kaggle credentials found: set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json "
    "in ~/.kaggle (in a Kaggle notebook: add Secrets named KAGGLE_USERNAME and KAGGLE_KEY)"
)


class Failure(Exception):
    """A failure already classified (raised by the operations themselves)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify(error: BaseException) -> tuple[str, str]:
    """``(kind, message)`` for an exception raised by the client."""
    if isinstance(error, Failure):
        return error.kind, str(error)
    status = http_status(error)
    if status is not None:
        if status == 401:
            kind = "auth"
        elif status == 404:
            kind = "not_found"
        elif status == 403:
            kind = "refused"  # permission (another owner's dataset, an unverified account); op_publish re-checks
        elif status in (408, 429) or status >= 500:
            kind = "transient"
        else:
            kind = "error"
        return kind, f"HTTP {status}: {error}"
    if isinstance(error, (ConnectionError, TimeoutError, *_network_errors())):
        return "transient", f"{type(error).__name__}: {error}"  # connection reset, refused, read timeout
    if isinstance(error, ValueError) and "Upload unsuccessful" in str(error):
        return "transient", str(error)  # a blob PUT failed; kaggle 2.x raises instead of dropping the file
    return "error", f"{type(error).__name__}: {error}"


def _network_errors() -> tuple[type[BaseException], ...]:
    try:
        import requests
        import urllib3
    except ImportError:  # pragma: no cover - both come with kaggle
        return ()
    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    )


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind ``requests.HTTPError`` (kaggle >= 1.7) or ``ApiException`` (kaggle 1.6)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is None and type(error).__name__ == "ApiException":
        status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def login_failure(error: BaseException) -> Failure:
    """A network error or 5xx at login (a token's IntrospectToken) is transient; anything else is a refusal.

    Every ``requests`` exception is an ``OSError``, so "OSError at login" alone does not mean "no credentials".
    """
    kind, message = classify(error)
    if kind == "transient":
        return Failure("transient", f"login failed: {message}")
    return Failure("auth", refused_message(message if isinstance(error, OSError) else "not accepted"))


def refused_message(detail: str) -> str:
    """Which credential source was refused (never the secret), or how to provide credentials when none exist."""
    from lightning_app.persistence.credentials import find_credentials

    credentials = find_credentials()
    if credentials is None:
        return _NO_CREDENTIALS
    return f"Kaggle refused the credentials from {credentials.source} ({detail})"


def _retry_after(error: BaseException) -> float | None:
    """The seconds of a ``Retry-After`` header on the failed response (an HTTP date counts as unknown)."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        return float(headers["Retry-After"])
    except (KeyError, TypeError, ValueError):
        return None


def failure_outcome(error: BaseException, api: Any | None) -> dict[str, Any]:
    """What the result file says of a failed operation: kind, a message holding no secret, status, Retry-After."""
    kind, message = classify(error)
    status = http_status(error)
    if kind == "auth" and not isinstance(error, Failure):
        message = refused_message(message)  # e.g. a 401: name the credential source that was refused
    if kind == "refused" and status == 403:
        message += "; Kaggle refused permission (another owner's dataset?): choose one with --sync.dataset"
    in_use = [getattr(api, "config_values", {}).get(k) for k in ("key", "token")] if api is not None else []
    message = redact_secrets(message, [s for s in in_use if isinstance(s, str)])[:2000]
    return {"ok": False, "kind": kind, "message": message, "status": status, "retry_after": _retry_after(error)}
