"""KaggleDatasetSync end to end: the real CLI, the real `kaggle` client, the fake Kaggle server on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lightning_app.persistence.folder import read_manifest
from lightning_app.persistence.kaggle.credentials import REFUSED_ADVICE
from tests.cli_helpers import cli_env, fit_args, run
from tests.fake_kaggle import FakeKaggle

pytestmark = pytest.mark.slow

QUIET = ("--trainer.enable_progress_bar", "false", "--sync.retry_delay", "0.1")


def _fit(tmp_path: Path, fake: FakeKaggle, *extra: str):
    env = cli_env(tmp_path / "home", fake.env(tmp_path))
    result = run(fit_args(*QUIET, *extra), tmp_path, env, timeout=240)
    return result, result.stdout + result.stderr


def _only_dataset(fake: FakeKaggle):
    assert len(fake.datasets) == 1, list(fake.datasets)
    ref = next(iter(fake.datasets))
    return ref, fake.datasets[ref], fake.versions(ref)


def _assert_newest_version_holds_final_checkpoint(tmp_path: Path, fake: FakeKaggle) -> None:
    _ref, _dataset, versions = _only_dataset(fake)
    local = read_manifest(tmp_path / "checkpoints").newest_first()[0]
    newest = versions[-1]
    assert set(newest.files) == {local.file, "manifest.json", "metrics.csv"}
    assert newest.files[local.file] == (tmp_path / "checkpoints" / local.file).read_bytes()
    uploaded = json.loads(newest.files["manifest.json"])
    assert [e["file"] for e in uploaded["checkpoints"]] == [local.file]


def test_three_epochs_make_one_private_dataset_with_three_versions(tmp_path, fake_kaggle):
    result, output = _fit(tmp_path, fake_kaggle, "--sync.required", "true")
    assert result.returncode == 0, output[-3000:]
    ref, dataset, versions = _only_dataset(fake_kaggle)
    assert f"Checkpoint sync checked: {ref} does not exist yet; it will be created" in output
    assert fake_kaggle.requests[0].rpc == "GetDatasetStatus"  # the cheap check came before any upload
    assert ref.startswith("fake-user/sinusoidal-tiny-") and ref.endswith("-checkpoints")
    assert dataset.is_private
    assert len(versions) == 3
    local = read_manifest(tmp_path / "checkpoints")
    for version, epoch in zip(versions, range(3)):
        checkpoints = [name for name in version.files if name.endswith(".ckpt")]
        assert len(checkpoints) == 1 and checkpoints[0].startswith(f"kaggle_epoch_{epoch}_")
        # The checkpoint, its manifest, and the run's metric history up to it: nothing else, ever.
        assert set(version.files) == {checkpoints[0], "manifest.json", "metrics.csv"}
        step = json.loads(version.files["manifest.json"])["checkpoints"][0]["global_step"]
        history = csv.DictReader(io.StringIO(version.files["metrics.csv"].decode()))
        steps = {int(row["step"]) for row in history}
        assert steps == set(range(step)), "the history holds every step logged before the checkpoint's, no later one"
    assert versions[1].notes.startswith("Checkpoint after epoch 1 (step 64, val_loss ")
    _assert_newest_version_holds_final_checkpoint(tmp_path, fake_kaggle)
    sizes = [v.bytes_uploaded for v in versions]
    assert max(sizes) - min(sizes) < 0.01 * max(sizes), "upload size per version must stay flat"
    assert output.count("Published kaggle_epoch_") == 3
    newest = local.newest_first()[0].file
    assert f"Final checkpoint {newest} published as version 3 of {ref}" in output.splitlines()[-1]
    assert len(local.entries) == 3


@pytest.mark.parametrize(
    "fault",
    ["fail_500", "fail_429", "drop", "hang", "processing_delay", "lost_reply"],
)
def test_faults_never_fail_the_run_and_the_final_checkpoint_lands(tmp_path, fake_kaggle, fault):
    if fault == "fail_500":
        fake_kaggle.fail_next(3, status=500, methods="CreateDatasetVersion")
    elif fault == "fail_429":
        fake_kaggle.fail_next(3, status=429, methods="StartBlobUpload")
    elif fault == "drop":
        fake_kaggle.drop_next(2, methods="PUT")
    elif fault == "hang":
        fake_kaggle.hang_next(1, methods="CreateDatasetVersion")
    elif fault == "processing_delay":
        fake_kaggle.processing_delay(2)
    elif fault == "lost_reply":
        fake_kaggle.drop_next(1, methods="CreateDatasetVersion", after_commit=True)
    result, output = _fit(tmp_path, fake_kaggle, "--sync.call_timeout", "4")
    assert result.returncode == 0, output[-3000:]
    _assert_newest_version_holds_final_checkpoint(tmp_path, fake_kaggle)
    _ref, _dataset, versions = _only_dataset(fake_kaggle)
    steps = [json.loads(v.files["manifest.json"])["checkpoints"][0]["global_step"] for v in versions]
    assert len(steps) == len(set(steps)), f"a checkpoint was published twice: {steps}"
    # The fault really happened (the client retries 429s and dropped uploads by itself; the rest are ours).
    if fault in ("fail_500", "fail_429"):
        assert sum(r.status == int(fault[-3:]) for r in fake_kaggle.requests) == 3
    elif fault == "drop":
        assert sum(r.status is None and r.method == "PUT" for r in fake_kaggle.requests) == 2
    elif fault != "processing_delay":
        assert "retry" in output


def test_wrong_credentials_warn_once_and_keep_local_checkpoints(tmp_path, fake_kaggle):
    fake_kaggle.refuse_credentials()
    result, output = _fit(tmp_path, fake_kaggle)
    assert result.returncode == 0, output[-3000:]
    assert output.count("Checkpoint sync stopped") == 1
    newest = read_manifest(tmp_path / "checkpoints").newest_first()[0].file
    assert len(read_manifest(tmp_path / "checkpoints").entries) == 3
    assert not fake_kaggle.datasets
    last = output.splitlines()[-1]
    assert last.startswith(f"Final checkpoint {newest} NOT published: credentials refused (")
    assert last.endswith(f"; it is only in {tmp_path / 'checkpoints'}")
    assert output.count("Checkpoints are NOT SAFE (credentials refused)") <= 2  # once per checkpoint at most


def test_required_sync_with_a_refused_credential_exits_2_with_one_line_before_training(tmp_path, fake_kaggle):
    fake_kaggle.refuse_credentials()
    result, output = _fit(tmp_path, fake_kaggle, "--sync.required", "true")
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --sync.required true: kaggle:{_default_ref(output)}: check: Kaggle refused the credentials "
        "from KAGGLE_USERNAME/KAGGLE_KEY environment variables "
        f"(HTTP 401: Unauthenticated: missing or invalid credentials); {REFUSED_ADVICE}"
    ], output[-3000:]
    assert "Traceback" not in output
    assert not (tmp_path / "checkpoints").is_dir() or not list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert not fake_kaggle.calls("StartBlobUpload")


def _default_ref(output: str) -> str:
    """The dataset the run said it would publish to."""
    line = next(line for line in output.splitlines() if line.startswith("Checkpoints will be published to kaggle:"))
    return line.split("kaggle:", 1)[1].split()[0]


def test_no_credentials_means_local_only_with_one_warning(tmp_path):
    result = run(fit_args(*QUIET), tmp_path, cli_env(tmp_path / "home"))
    assert result.returncode == 0
    assert (result.stdout + result.stderr).count("No Kaggle credentials found") == 1


def test_the_key_is_never_uploaded_logged_or_saved(tmp_path, fake_kaggle):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "kaggle.json").write_text(json.dumps({"username": "x", "key": fake_kaggle.key}))
    result, output = _fit(tmp_path, fake_kaggle)
    assert result.returncode == 0, output[-3000:]
    key = fake_kaggle.key.encode()
    _ref, _dataset, versions = _only_dataset(fake_kaggle)
    for version in versions:
        assert "kaggle.json" not in version.files
        for name, data in version.files.items():
            assert key not in data, f"the key was uploaded in {name}"
    assert fake_kaggle.key not in output
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "kaggle.json" and "kaggle-config" not in path.parts:
            assert key not in path.read_bytes(), f"the key was written to {path}"


def test_only_rank_zero_publishes_under_ddp(tmp_path, fake_kaggle):
    result, output = _fit(tmp_path, fake_kaggle, "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert result.returncode == 0, output[-3000:]
    _ref, _dataset, versions = _only_dataset(fake_kaggle)
    assert len(versions) == 3
    creates = len(fake_kaggle.calls("CreateDataset")) + len(fake_kaggle.calls("CreateDatasetVersion"))
    assert creates == 3, "a second rank published too"
    _assert_newest_version_holds_final_checkpoint(tmp_path, fake_kaggle)


def test_token_login_that_fails_twice_with_503_still_publishes(tmp_path, fake_kaggle):
    fake_kaggle.fail_next(2, status=503, methods="IntrospectToken")
    env = cli_env(tmp_path / "home", fake_kaggle.env(tmp_path))
    del env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    env["KAGGLE_API_TOKEN"] = fake_kaggle.token
    args = fit_args(*QUIET, "--sync.dataset", "fake-user/token-run-checkpoints")
    result = run(args, tmp_path, env, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert fake_kaggle.faults.pending() == 0 and "Checkpoint sync stopped" not in output
    _assert_newest_version_holds_final_checkpoint(tmp_path, fake_kaggle)


def test_title_in_use_stops_sync_with_one_warning(tmp_path, fake_kaggle):
    fake_kaggle.add_dataset("fake-user/older-run", title="taken-title")
    result, output = _fit(
        tmp_path, fake_kaggle, "--sync.dataset", "fake-user/new-run-checkpoints", "--sync.title", "taken-title"
    )
    assert result.returncode == 0, output[-3000:]
    assert output.count("Checkpoint sync stopped") == 1
    assert 'The requested title "taken-title" is already in use by a dataset' in output
    assert len(fake_kaggle.calls("CreateDataset")) == 1
    assert list(fake_kaggle.datasets) == ["fake-user/older-run"]
