"""The weekly GPU quota left, as far as the installed ``kaggle`` client can tell.

Kaggle answers ``kernels.KernelsApiService/GetAcceleratorQuotaStatistics`` with the weekly GPU and TPU quota
(``time_used``, ``total_time_allowed``, ``time_reserved`` as protobuf Durations) and ``quota_refresh_time`` (UTC,
given back by kagglesdk without a time zone). kaggle >= 2.2.1 wraps it as ``KaggleApi.quota_view()``; kaggle
1.8 has no such call, but the same request goes through its kagglesdk when that is 0.1.28 or newer (the first
release with the request type). Anything older cannot tell.

The request runs in a child process like every other Kaggle call (``child.py``; the client differences are in
``client.gpu_quota``), bounded in time::

    quota = read_gpu_quota()          # QuotaUnavailable, AuthError, TransientError or StoreError
    print(f"GPU quota {quota.left_seconds / 3600:.1f} h left ({quota.source})")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lightning_app.persistence.kaggle.calls import ChildCalls
from lightning_app.persistence.kaggle.outcomes import FailureKind, Operation
from lightning_app.persistence.kaggle.store import raise_failure


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
    outcome = ChildCalls("kaggle").run(Operation.QUOTA, {}, call_timeout)
    if not outcome.ok and outcome.kind is FailureKind.UNAVAILABLE:
        raise QuotaUnavailable(outcome.message)
    return gpu_quota_from(raise_failure(outcome, "kaggle: reading the GPU quota"))


def gpu_quota_from(result: dict) -> GpuQuota:
    """A `GpuQuota` from what the child's quota call (``client.gpu_quota``) answers."""
    refresh = result["refreshes_at"]
    return GpuQuota(
        used_seconds=float(result["used_seconds"]),
        allowed_seconds=float(result["allowed_seconds"]),
        refreshes_at=datetime.fromisoformat(refresh) if refresh else None,
        source=str(result["source"]),
        reserved_seconds=float(result.get("reserved_seconds", 0.0)),
    )
