"""`KaggleKernels`: pushes and kernel states through the real client in child processes, against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_app.persistence.kaggle.kernels import KaggleKernels, PushRefused
from lightning_app.persistence.kaggle.store import read_newest
from lightning_app.persistence.store import RefusedError, TransientError

REF = "fake-user/lm-chain"


def kernel_folder(tmp_path: Path, token: str, **metadata) -> Path:
    folder = tmp_path / token
    folder.mkdir()
    (folder / "run.py").write_text(f"print('a session')  # {token}\n")
    fields = {"id": REF, "title": "lm-chain", "code_file": "run.py", "language": "python", "kernel_type": "script"}
    fields.update(is_private=True, enable_gpu=True, enable_internet=True, machine_shape="NvidiaL4", **metadata)
    (folder / "kernel-metadata.json").write_text(json.dumps(fields))
    return folder


def test_a_push_retried_after_a_lost_reply_makes_one_version(fake_kaggle, kaggle_env, tmp_path):
    kernels = KaggleKernels(REF)
    assert not kernels.state().exists
    saved = kernels.push(kernel_folder(tmp_path, "token-1", dataset_sources=["fake-user/absent"]), quick_save=True)
    assert (saved.version, saved.existing, saved.invalid_sources) == (1, False, ("fake-user/absent",))
    folder = kernel_folder(tmp_path, "token-2")
    fake_kaggle.drop_next(1, methods="SaveKernel", after_commit=True)
    with pytest.raises(TransientError):
        kernels.push(folder, token="token-2")
    again = kernels.push(folder, token="token-2", look_first=True)
    assert (again.version, again.existing) == (2, True)
    (session,) = fake_kaggle.kernel_sessions(REF)  # the lost reply's run, and no second one
    assert session.number == 2 and session.machine_shape == "NvidiaL4" and session.enable_internet
    fake_kaggle.set_gpu_quota(used=4 * 3600, allowed=30 * 3600)
    state = kernels.state(versions=(1, 2, 7), token="token-2", quota=True)
    assert (state.current_version, state.status, state.active, state.token_version) == (2, "QUEUED", True, 2)
    assert state.versions == {1: ("NEW_SCRIPT", ""), 2: ("QUEUED", ""), 7: ("MISSING", "")}
    assert state.quota.left_seconds == 26 * 3600 and state.quota.source in ("quota_view", "kagglesdk")


def test_refusals_say_which(fake_kaggle, kaggle_env, tmp_path):
    kernels = KaggleKernels(REF)
    fake_kaggle.set_gpu_quota(used=30 * 3600, allowed=30 * 3600)
    with pytest.raises(PushRefused) as refused:
        kernels.push(kernel_folder(tmp_path, "token-1"))
    assert refused.value.reason == "quota" and "30.00 hours" in str(refused.value)
    fake_kaggle.refuse_next_push("Invalid kernel slug 'x': use lower-case letters, digits and hyphens")
    with pytest.raises(PushRefused) as refused:
        kernels.push(kernel_folder(tmp_path, "token-2"))
    assert refused.value.reason == "name" and fake_kaggle.kernel_versions(REF) == []
    with pytest.raises(RefusedError, match="another user's kernel"):
        KaggleKernels("someone-else/their-kernel").state()


def test_the_newest_version_of_several_datasets_in_one_call(fake_kaggle, kaggle_env):
    fake_kaggle.add_dataset("fake-user/lm-chain-chain", "lm chain", {"chain.json": b'{"sessions": []}'})
    fake_kaggle.add_version("fake-user/lm-chain-chain", {"chain.json": b'{"sessions": [1]}', "other.bin": b"x"})
    found = read_newest({"fake-user/lm-chain-chain": "chain.json", "fake-user/lm-chain-stop": "stop.json"})
    assert found["fake-user/lm-chain-stop"] is None
    newest = found["fake-user/lm-chain-chain"]
    assert newest.number == 2 and newest.texts == {"chain.json": '{"sessions": [1]}'}
    assert [f.name for f in newest.files] == ["chain.json", "other.bin"]
