"""``read_gpu_quota`` through its child process and the real ``kaggle`` client, against the fake server.

kaggle 2.x asks with ``quota_view()``; kaggle 1.8 (run this file in a 1.8 venv) with the same kagglesdk request.
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from lightning_app.persistence.kaggle.operations import quota as op_quota
from lightning_app.persistence.kaggle.outcomes import CallFailed as Failure
from lightning_app.persistence.kaggle.quota import GpuQuota, QuotaUnavailable, read_gpu_quota
from lightning_app.persistence.store import AuthError, TransientError

HOURS = 3600.0


def _expected_source() -> str:
    from kaggle.api.kaggle_api_extended import KaggleApi

    return "quota_view" if hasattr(KaggleApi, "quota_view") else "kagglesdk"


def test_reads_the_weekly_gpu_quota(kaggle_env, fake_kaggle):
    refresh = datetime(2026, 12, 19, 0, 0, tzinfo=timezone.utc)
    fake_kaggle.set_gpu_quota(used=21.25 * HOURS, allowed=30 * HOURS, reserved=1800, refresh_at=refresh)
    quota = read_gpu_quota(call_timeout=30)
    assert quota == GpuQuota(21.25 * HOURS, 30 * HOURS, refresh, _expected_source(), reserved_seconds=1800)
    assert quota.left_seconds == 8.75 * HOURS and quota.refreshes_at.tzinfo is not None
    assert fake_kaggle.calls("GetAcceleratorQuotaStatistics")


def test_nothing_used_no_refresh_time_and_over_the_quota(kaggle_env, fake_kaggle):
    fake_kaggle.set_gpu_quota(used=0, allowed=30 * HOURS)  # zeros are left out of the reply
    quota = read_gpu_quota(call_timeout=30)
    assert (quota.used_seconds, quota.left_seconds, quota.refreshes_at) == (0.0, 30 * HOURS, None)
    fake_kaggle.set_gpu_quota(used=31 * HOURS, allowed=30 * HOURS)
    assert read_gpu_quota(call_timeout=30).left_seconds == 0.0


def test_no_gpu_quota_in_the_answer_is_unavailable(kaggle_env, fake_kaggle):
    fake_kaggle.hide_gpu_quota()
    with pytest.raises(QuotaUnavailable, match="no GPU quota"):
        read_gpu_quota(call_timeout=30)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", TransientError), ("drop", TransientError), ("429", TransientError), ("401", AuthError)],
)
def test_failures_are_classified(kaggle_env, fake_kaggle, fault, error):
    if fault == "drop":
        fake_kaggle.drop_next(1, methods="GetAcceleratorQuotaStatistics")
    elif fault == "401":
        fake_kaggle.refuse_credentials()
    else:
        fake_kaggle.fail_next(1, int(fault), "GetAcceleratorQuotaStatistics", retry_after=7 if fault == "429" else None)
    with pytest.raises(error) as caught:
        read_gpu_quota(call_timeout=30)
    assert fake_kaggle.key not in str(caught.value)
    if fault == "429":
        assert caught.value.retry_after == 7.0


def test_a_hung_quota_call_is_bounded(kaggle_env, fake_kaggle):
    fake_kaggle.hang_next(1, methods="GetAcceleratorQuotaStatistics")
    with pytest.raises(TransientError, match="timed out after 1.5 s"):
        read_gpu_quota(call_timeout=1.5)
    assert fake_kaggle.faults.holding() == 1


class _Kernels:
    """A kagglesdk kernels client from before GetAcceleratorQuotaStatistics (kagglesdk < 0.1.28)."""


class _OldClient:
    def __enter__(self):
        return SimpleNamespace(kernels=SimpleNamespace(kernels_api_client=_Kernels()))

    def __exit__(self, *exc_info):
        return None


@pytest.mark.parametrize("api", [SimpleNamespace(build_kaggle_client=_OldClient)], ids=["kagglesdk-before-0.1.28"])
def test_a_client_that_cannot_ask_says_so(api):
    with pytest.raises(Failure, match="cannot tell the GPU quota") as caught:
        op_quota(api, {})
    assert caught.value.kind == "unavailable"


def test_a_service_that_does_not_know_the_request_is_unavailable(api, fake_kaggle, monkeypatch):
    monkeypatch.setattr(fake_kaggle.state.kernels, "_rpc_GetAcceleratorQuotaStatistics", None)  # 404 "unknown"
    with pytest.raises(Failure, match="does not answer the quota request") as caught:
        op_quota(api, {})
    assert caught.value.kind == "unavailable"
