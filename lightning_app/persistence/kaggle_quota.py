"""The weekly GPU quota left, as far as the installed ``kaggle`` client can tell.

Kaggle answers ``kernels.KernelsApiService/GetAcceleratorQuotaStatistics`` with the weekly GPU and TPU quota
(``time_used``, ``total_time_allowed``, ``time_reserved`` as protobuf Durations) and ``quota_refresh_time`` (UTC,
given back by kagglesdk without a time zone). kaggle >= 2.2.1 wraps it as ``KaggleApi.quota_view()``; kaggle
1.8 has no such call, but the same request goes through its kagglesdk when that is 0.1.28 or newer (the first
release with the request type). Anything older cannot tell.

The request runs in a child process like every other Kaggle call (``kaggle_calls.py``), bounded in time::

    quota = read_gpu_quota()          # QuotaUnavailable, AuthError, TransientError or StoreError
    print(f"GPU quota {quota.left_seconds / 3600:.1f} h left ({quota.source})")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from lightning_app.persistence.credentials import redact_secrets
from lightning_app.persistence.kaggle_errors import Failure, http_status
from lightning_app.persistence.kaggle_process import ChildCalls
from lightning_app.persistence.store_protocol import (
    AuthError,
    NotFoundError,
    RefusedError,
    StoreError,
    TransientError,
)

#: The child's failure kind for "the client cannot tell" (read as ``QuotaUnavailable``).
UNAVAILABLE = "unavailable"
_ERRORS = {"auth": AuthError, "not_found": NotFoundError, "refused": RefusedError}


@dataclass(frozen=True)
class GpuQuota:
    """The weekly GPU quota as Kaggle reports it.

    Attributes:
        used_seconds: GPU time used in the current weekly window.
        allowed_seconds: GPU time allowed in the current weekly window.
        refreshes_at: when the window resets (timezone-aware UTC); None when Kaggle did not say.
        source: ``"quota_view"`` (kaggle >= 2.2.1) or ``"kagglesdk"`` (the same request through kagglesdk).
        reserved_seconds: GPU time reserved by sessions running now (``time_reserved``; Kaggle does not say
            whether ``used_seconds`` already counts them, so ``left_seconds`` leaves it out).
    """

    used_seconds: float
    allowed_seconds: float
    refreshes_at: datetime | None
    source: str
    reserved_seconds: float = 0.0

    @property
    def left_seconds(self) -> float:
        """GPU time left this week (never below 0)."""
        return max(0.0, self.allowed_seconds - self.used_seconds)


class QuotaUnavailable(Exception):
    """The installed client cannot tell the quota; the message says why, in a few words."""


def read_gpu_quota(call_timeout: float = 60.0) -> GpuQuota:
    """The weekly GPU quota, read by a child process killed after ``call_timeout`` seconds.

    Raises ``QuotaUnavailable`` when the client cannot tell, ``AuthError`` when the credentials are refused,
    ``TransientError`` (with ``retry_after`` when the service sent one) when the service cannot be reached or
    fails, ``StoreError`` otherwise.
    """
    outcome = ChildCalls("kaggle").run("quota", {}, call_timeout)
    if not outcome["ok"]:
        message = redact_secrets(f"kaggle: reading the GPU quota: {outcome['message']}")
        if outcome["kind"] == UNAVAILABLE:
            raise QuotaUnavailable(outcome["message"])
        if outcome["kind"] == "transient":
            raise TransientError(message, outcome.get("retry_after"))
        raise _ERRORS.get(outcome["kind"], StoreError)(message)
    result = outcome["result"]
    refresh = result["refreshes_at"]
    return GpuQuota(
        used_seconds=float(result["used_seconds"]),
        allowed_seconds=float(result["allowed_seconds"]),
        refreshes_at=datetime.fromisoformat(refresh) if refresh else None,
        source=str(result["source"]),
        reserved_seconds=float(result.get("reserved_seconds", 0.0)),
    )


# -- child side (kaggle_calls "quota") ---------------------------------------------------------------------------


def op_quota(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """``{used_seconds, allowed_seconds, reserved_seconds, refreshes_at (ISO, UTC, or None), source}``.

    Raises ``Failure("unavailable", ...)`` when this client cannot ask, or the answer holds no GPU quota.
    """
    try:
        response, source = _ask(api)
    except Exception as error:
        if http_status(error) == 404:  # a service that does not know the request
            raise Failure(UNAVAILABLE, f"Kaggle does not answer the quota request ({error})") from error
        raise
    gpu = getattr(response, "gpu_quota", None)
    allowed = _seconds(getattr(gpu, "total_time_allowed", None))
    if gpu is None or allowed is None:
        raise Failure(UNAVAILABLE, "Kaggle's answer holds no GPU quota")
    refresh = getattr(response, "quota_refresh_time", None)
    if refresh is not None:  # kagglesdk parses the UTC timestamp without a time zone
        refresh = refresh.replace(tzinfo=timezone.utc) if refresh.utcoffset() is None else refresh
        refresh = refresh.astimezone(timezone.utc).isoformat()
    return {
        "used_seconds": _seconds(getattr(gpu, "time_used", None)) or 0.0,  # a zero Duration arrives as None
        "allowed_seconds": allowed,
        "reserved_seconds": _seconds(getattr(gpu, "time_reserved", None)) or 0.0,
        "refreshes_at": refresh,
        "source": source,
    }


def _ask(api: Any) -> tuple[Any, str]:
    """The GetAcceleratorQuotaStatistics response, and which way it was asked."""
    if hasattr(api, "quota_view"):  # kaggle >= 2.2.1
        return api.quota_view(), "quota_view"
    try:
        from kagglesdk.kernels.types.kernels_api_service import ApiGetAcceleratorQuotaStatisticsRequest
    except ImportError:
        raise _cannot_tell() from None
    if not hasattr(api, "build_kaggle_client"):  # kaggle 1.6's swagger client
        raise _cannot_tell()
    with api.build_kaggle_client() as kaggle:
        kernels = kaggle.kernels.kernels_api_client
        if not hasattr(kernels, "get_accelerator_quota_statistics"):
            raise _cannot_tell()
        return kernels.get_accelerator_quota_statistics(ApiGetAcceleratorQuotaStatisticsRequest()), "kagglesdk"


def _cannot_tell() -> Failure:
    return Failure(UNAVAILABLE, f"{_client()} cannot tell the GPU quota (kaggle >= 2.2.1 or kagglesdk >= 0.1.28 can)")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _client() -> str:
    """``kaggle X / kagglesdk Y`` as installed."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"no {name}"

    return f"{installed('kaggle')} with {installed('kagglesdk')}"
