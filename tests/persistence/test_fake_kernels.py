"""The fake server's kernel and quota calls, driven by the real ``kaggle`` client (2.x, or 1.8 in its own venv).

``save`` builds kagglesdk's ``ApiSaveKernelRequest`` through ``api.build_kaggle_client()``, which both client lines
can do (1.8's ``kernels_push`` sends neither ``machineShape`` nor ``kernelExecutionType``); ``api.kernels_push``
itself is driven too, with what each client line really sends.
"""

from __future__ import annotations

import inspect
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

REF = "fake-user/lm-chain"
HOURS = 3600.0


def _push_takes_no_run() -> bool:
    from kaggle.api.kaggle_api_extended import KaggleApi

    return "no_run" in inspect.signature(KaggleApi.kernels_push).parameters  # kaggle >= 2.2.5


def save(
    api,
    *,
    slug: str = REF,
    title: str | None = None,
    text: str = "print('session')\n",
    quick: bool = False,
    machine_shape: str | None = "NvidiaTeslaT4",
    sources: tuple[str, ...] = (),
):
    """SaveKernel as the product sends it: a private script, internet on."""
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest
    from kagglesdk.kernels.types.kernels_enums import KernelExecutionType

    request = ApiSaveKernelRequest()
    request.slug = slug
    request.new_title = title or slug.split("/")[1]
    request.text = text
    request.language = "python"
    request.kernel_type = "script"
    request.is_private = True
    request.enable_internet = True
    request.dataset_data_sources = list(sources)
    request.machine_shape = machine_shape
    if quick:
        request.kernel_execution_type = KernelExecutionType.QUICK_SAVE
    with api.build_kaggle_client() as kaggle:
        return kaggle.kernels.kernels_api_client.save_kernel(request)


def status(api, ref: str = REF, label: str | None = None):
    """GetKernelSessionStatus through kagglesdk (both clients): the response (``status``, ``failure_message``)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name, request.kernel_slug = ref.split("/")
    request.version_label = label
    with api.build_kaggle_client() as kaggle:
        return kaggle.kernels.kernels_api_client.get_kernel_session_status(request)


def _kernel_folder(root: Path, metadata: dict) -> Path:
    folder = root / "kernel"
    folder.mkdir()
    (folder / "run.py").write_text("print('pushed by the client')\n")
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    return folder


def test_kernels_push_sends_what_each_client_line_sends(api, fake_kaggle, tmp_path):
    fake_kaggle.add_dataset("fake-user/lm-ckpts", "LM ckpts")
    metadata = {
        "id": REF,
        "title": "lm-chain",
        "code_file": "run.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": "true",
        "enable_internet": "true",
        "machine_shape": "NvidiaL4",
        "dataset_sources": ["fake-user/lm-ckpts", "fake-user/not-a-dataset"],
    }
    response = api.kernels_push(str(_kernel_folder(tmp_path, metadata)), "3600")
    assert not response.error and response.version_number == 1 and response.url.endswith(f"/code/{REF}")
    assert response.invalid_dataset_sources == ["fake-user/not-a-dataset"]  # dropped, the version still made

    (version,) = fake_kaggle.kernel_versions(REF)
    assert version.source == "print('pushed by the client')\n" and version.runs and version.status == "QUEUED"
    assert version.is_private and version.enable_internet and version.session_timeout == 3600
    assert version.dataset_sources == ["fake-user/lm-ckpts"]
    if _push_takes_no_run():
        assert version.machine_shape == version.accelerator == "NvidiaL4"
    else:  # kaggle 1.8 never sends machine_shape: the run gets no accelerator at all
        assert version.machine_shape is None and version.accelerator is None
    assert api.kernels_status(REF).status.name == "QUEUED"


def test_a_quick_save_makes_a_version_that_never_runs(api, fake_kaggle, tmp_path):
    assert save(api, quick=True).version_number == 1
    assert fake_kaggle.kernel_sessions(REF) == [] and fake_kaggle.next_queued(timeout=0) is None
    assert status(api).status.name == "NEW_SCRIPT"  # no version ever ran
    assert save(api).version_number == 2
    assert status(api).status.name == "QUEUED" and status(api, label="v1").status.name == "NEW_SCRIPT"
    with pytest.raises(requests.HTTPError) as caught:
        status(api, label="1")  # the service wants "v1" (kaggle 2.2.5 writes it so)
    assert caught.value.response.status_code == 404
    assert [v.execution for v in fake_kaggle.kernel_versions(REF)] == ["QUICK_SAVE", ""]

    if _push_takes_no_run():
        metadata = {"id": REF, "title": "lm-chain", "code_file": "run.py", "language": "python"}
        metadata["kernel_type"] = "script"
        response = api.kernels_push(str(_kernel_folder(tmp_path, metadata)), no_run=True)
        assert response.version_number == 3 and not fake_kaggle.kernel_versions(REF)[2].runs


def test_a_runner_takes_each_session_through_its_states(api, fake_kaggle):
    taken = []
    runner = threading.Thread(target=lambda: taken.append(fake_kaggle.next_queued(timeout=20)))
    runner.start()
    save(api, text="train()\n")
    runner.join(timeout=30)
    (session,) = taken
    assert (session.ref, session.number, session.source, session.accelerator) == (REF, 1, "train()\n", "NvidiaTeslaT4")

    fake_kaggle.set_kernel_status(REF, 1, "RUNNING")
    assert api.kernels_status(REF).status.name == "RUNNING"
    fake_kaggle.set_kernel_status(REF, 1, "COMPLETE")
    assert api.kernels_status(REF).status.name == "COMPLETE"
    with pytest.raises(ValueError, match="COMPLETE cannot become RUNNING"):
        fake_kaggle.set_kernel_status(REF, 1, "RUNNING")

    save(api)
    fake_kaggle.set_kernel_status(REF, 2, "ERROR", failure_message="Your notebook tried to allocate more memory")
    answer = api.kernels_status(REF)
    assert answer.status.name == "ERROR" and answer.failure_message.startswith("Your notebook")

    save(api)
    fake_kaggle.set_kernel_status(REF, 3, "RUNNING")
    fake_kaggle.set_kernel_status(REF, 3, "CANCEL_REQUESTED")  # the user pressed Cancel in the web UI
    assert fake_kaggle.wait_for_kernel_status(REF, 3, ("CANCEL_REQUESTED",), timeout=1) == "CANCEL_REQUESTED"
    fake_kaggle.set_kernel_status(REF, 3, "CANCEL_ACKNOWLEDGED")
    assert api.kernels_status(REF).status.name == "CANCEL_ACKNOWLEDGED"
    assert [v.status for v in fake_kaggle.kernel_sessions(REF)] == ["COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"]


def test_kernels_that_cannot_be_read(api, fake_kaggle, tmp_path):
    with pytest.raises(requests.HTTPError) as caught:
        api.kernels_status("fake-user/never-made")
    assert caught.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as caught:
        api.kernels_pull("fake-user/never-made", str(tmp_path / "pulled"), metadata=True)
    assert caught.value.response.status_code == 404
    # Another owner's kernel, private or missing: a permission refusal, which kaggle 2.2.5 raises as ValueError.
    with pytest.raises(requests.HTTPError) as caught:
        status(api, "someone-else/their-kernel")
    assert caught.value.response.status_code == 403
    with pytest.raises((ValueError, requests.HTTPError), match="kernels.get"):
        api.kernels_status("someone-else/their-kernel")

    save(api, text="the source\n")
    pulled = Path(api.kernels_pull(REF, str(tmp_path / "pulled"), metadata=True))
    assert json.loads((pulled / "kernel-metadata.json").read_text())["id"] == REF
    assert (pulled / "lm-chain.py").read_text() == "the source\n"


def test_refused_pushes_answer_200_with_an_error_and_make_no_version(api, fake_kaggle):
    fake_kaggle.set_gpu_quota(used=30 * HOURS, allowed=30 * HOURS)
    refused = save(api)
    assert refused.error == "Maximum weekly GPU quota of 30.00 hours reached." and not refused.version_number
    assert fake_kaggle.kernel_versions(REF) == []
    assert save(api, machine_shape=None).version_number == 1  # a CPU run is not held back by the GPU quota
    assert save(api, quick=True).version_number == 2

    fake_kaggle.set_gpu_quota(used=0, allowed=30 * HOURS)
    fake_kaggle.session_limits(gpu=1)
    assert save(api).version_number == 3
    assert save(api).error == "Maximum batch GPU session count of 1 reached."
    fake_kaggle.set_kernel_status(REF, 3, "RUNNING")
    fake_kaggle.set_kernel_status(REF, 3, "COMPLETE")
    assert save(api).version_number == 4

    assert save(api, slug="someone-else/lm-chain").error == "Kernel not found"
    assert save(api, slug="fake-user/Bad_Slug").error.startswith("Invalid kernel slug")
    fake_kaggle.refuse_next_push("Notebook not found")
    assert save(api).error == "Notebook not found"
    assert [v.number for v in fake_kaggle.kernel_versions(REF)] == [1, 2, 3, 4]


def test_a_title_that_resolves_elsewhere_names_the_kernel(api, fake_kaggle):
    response = save(api, title="LM chain two")
    assert response.ref == "/code/fake-user/lm-chain-two" and not response.error
    assert fake_kaggle.kernel_versions(REF) == [] and len(fake_kaggle.kernel_versions("fake-user/lm-chain-two")) == 1


def test_faults_on_kernel_calls(api, fake_kaggle):
    fake_kaggle.fail_next(1, status=500, methods="SaveKernel")
    with pytest.raises(requests.HTTPError) as caught:
        save(api)
    assert caught.value.response.status_code == 500 and fake_kaggle.kernel_versions(REF) == []

    fake_kaggle.drop_next(1, methods="SaveKernel", after_commit=True)
    with pytest.raises(requests.ConnectionError):
        save(api)
    assert [v.status for v in fake_kaggle.kernel_versions(REF)] == ["QUEUED"]  # the reply was lost, not the run

    fake_kaggle.fail_next(1, status=429, methods="GetKernelSessionStatus", retry_after=3)
    with pytest.raises(requests.HTTPError) as caught:
        status(api)
    assert caught.value.response.status_code == 429 and caught.value.response.headers["Retry-After"] == "3"
    fake_kaggle.refuse_credentials()
    with pytest.raises(requests.HTTPError) as caught:
        status(api)
    assert caught.value.response.status_code == 401


def test_the_quota_call_reports_what_the_test_sets(api, fake_kaggle):
    from kagglesdk.kernels.types.kernels_api_service import ApiGetAcceleratorQuotaStatisticsRequest

    def quota():
        with api.build_kaggle_client() as kaggle:
            sdk = kaggle.kernels.kernels_api_client.get_accelerator_quota_statistics(
                ApiGetAcceleratorQuotaStatisticsRequest()
            )
        if hasattr(api, "quota_view"):  # kaggle >= 2.2.1 makes the very same request
            assert api.quota_view().to_dict() == sdk.to_dict()
        return sdk

    refresh = datetime(2026, 12, 19, tzinfo=timezone.utc)
    fake_kaggle.set_gpu_quota(used=4.5 * HOURS, allowed=30 * HOURS, reserved=600.5, refresh_at=refresh)
    answer = quota()
    assert answer.gpu_quota.time_used == timedelta(hours=4.5)
    assert answer.gpu_quota.total_time_allowed == timedelta(hours=30)
    assert answer.gpu_quota.time_reserved == timedelta(seconds=600.5)
    assert answer.quota_refresh_time == refresh.replace(tzinfo=None)  # kagglesdk drops the "Z"
    fake_kaggle.set_gpu_quota(used=0, allowed=30 * HOURS)
    answer = quota()
    assert answer.gpu_quota.time_used is None and answer.quota_refresh_time is None  # proto3 leaves zeros out
    fake_kaggle.hide_gpu_quota()
    answer = quota()
    assert answer.gpu_quota is None and answer.tpu_quota.total_time_allowed == timedelta(hours=20)


def test_list_kernels(api, fake_kaggle):
    fake_kaggle.add_kernel("fake-user/made-in-the-editor")
    save(api)
    fake_kaggle.add_kernel("someone-else/private-one")
    assert sorted(k.ref for k in api.kernels_list(mine=True)) == ["fake-user/lm-chain", "fake-user/made-in-the-editor"]
    assert [k.ref for k in api.kernels_list(search="editor", user="fake-user")] == ["fake-user/made-in-the-editor"]
    assert status(api, "fake-user/made-in-the-editor").status.name == "NEW_SCRIPT"


def test_a_token_that_may_not_write_cannot_push(api, fake_kaggle, monkeypatch):
    save(api)  # before KAGGLE_API_TOKEN is set: kagglesdk would send that token for this client too
    fake_kaggle.add_token("KGAT_read_only", may_write=False)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_read_only")
    from kaggle.api.kaggle_api_extended import KaggleApi

    reader = KaggleApi()
    reader.authenticate()
    with pytest.raises(requests.HTTPError, match="kernels.create") as caught:
        save(reader)
    assert caught.value.response.status_code == 403 and len(fake_kaggle.kernel_versions(REF)) == 1
    assert status(reader).status.name == "QUEUED"  # it may still read
