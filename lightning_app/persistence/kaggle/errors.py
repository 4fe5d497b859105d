"""How the child process reads the ``kaggle`` client's failures: a `FailureKind` the parent acts on, a message that
holds no secret, the HTTP status and the server's ``Retry-After``.

The client raises ``requests.HTTPError`` for a non-2xx answer (``error.response.status_code``) and ``requests`` /
``urllib3`` exceptions for the network; every ``requests`` exception is an ``OSError``, so "OSError at login" alone
does not mean "no credentials" (a token login calls the network).
"""

from __future__ import annotations

from typing import Any

from lightning_app.persistence.kaggle.credentials import (
    NO_CREDENTIALS_ADVICE,
    REFUSED_ADVICE,
    find_credentials,
    redact_secrets,
)
from lightning_app.persistence.kaggle.outcomes import CallFailed, FailureKind


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind a ``requests.HTTPError``; None for anything else."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def classify(error: BaseException) -> CallFailed:
    """The classified failure for an exception raised by the client (or by an operation)."""
    if isinstance(error, CallFailed):
        return error
    status = http_status(error)
    if status is not None:
        if status == 401:
            kind = FailureKind.AUTH
        elif status == 404:
            kind = FailureKind.NOT_FOUND
        elif status == 403:
            kind = FailureKind.REFUSED  # permission (another owner's dataset, an unverified account)
        elif status in (408, 429) or status >= 500:
            kind = FailureKind.TRANSIENT
        else:
            kind = FailureKind.ERROR
        return CallFailed(kind, f"HTTP {status}: {error}", status, _retry_after(error))
    if isinstance(error, (ConnectionError, TimeoutError, *_network_errors())):
        return CallFailed(FailureKind.TRANSIENT, f"{type(error).__name__}: {error}")  # reset, refused, timed out
    if isinstance(error, ValueError) and "Upload unsuccessful" in str(error):
        return CallFailed(FailureKind.TRANSIENT, str(error))  # a blob PUT failed
    return CallFailed(FailureKind.ERROR, f"{type(error).__name__}: {error}")


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3

    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    )


def login_failure(error: BaseException) -> CallFailed:
    """A network error or 5xx at login (a token's IntrospectToken) is transient; anything else is a refusal."""
    failure = classify(error)
    if failure.kind is FailureKind.TRANSIENT:
        return CallFailed(FailureKind.TRANSIENT, f"login failed: {failure}", failure.status, failure.retry_after)
    return CallFailed(FailureKind.AUTH, refused_message(str(failure) if isinstance(error, OSError) else "not accepted"))


def refused_message(detail: str) -> str:
    """Which credential source was refused (never the secret), or how to provide credentials when none exist."""
    credentials = find_credentials()
    if credentials is None:
        return f"no Kaggle credentials found: {NO_CREDENTIALS_ADVICE}"
    return f"Kaggle refused the credentials from {credentials.source} ({detail}); {REFUSED_ADVICE}"


def _retry_after(error: BaseException) -> float | None:
    """The seconds of a ``Retry-After`` header on the failed response (an HTTP date counts as unknown)."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    try:
        return float(headers["Retry-After"])
    except (KeyError, TypeError, ValueError):
        return None


def failure_for_parent(error: BaseException, api: Any | None) -> CallFailed:
    """The failure as the result file carries it: classified, worded for a user, without any secret."""
    failure = classify(error)
    message = str(failure)
    if failure.kind is FailureKind.AUTH and not isinstance(error, CallFailed):
        message = refused_message(message)  # e.g. a 401: name the credential source that was refused
    if failure.kind is FailureKind.REFUSED and failure.status == 403 and not isinstance(error, CallFailed):
        message += "; Kaggle refused permission (another owner's dataset?): choose one with --sync.dataset"
    in_use = [getattr(api, "config_values", {}).get(k) for k in ("key", "token")] if api is not None else []
    message = redact_secrets(message, [s for s in in_use if isinstance(s, str)])[:2000]
    return CallFailed(failure.kind, message, failure.status, failure.retry_after)
