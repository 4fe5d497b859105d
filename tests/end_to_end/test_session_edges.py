"""The next session's start, when the service is flaky, down, or holds a torn newest version: ``fit --resume`` in a
fresh working directory with nothing attached, through the real client against the fake server.

Session 1 (shared by the tests) publishes several versions and is killed; each test gives a fresh fake server a
copy of what it stored, then runs session 2.
"""

from __future__ import annotations

import copy
import re
import signal
import time

import pytest

from lightning_app.persistence.folder import read_manifest
from tests.cli_helpers import (
    RESUME_FLAGS,
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    resumed_step,
    run,
)
from tests.fake_kaggle import FakeKaggle
from tests.support.kill_switch import kill_config

pytestmark = pytest.mark.slow

DATASET_RPCS = ("GetDatasetStatus", "GetDataset", "ListDatasetFiles", "DownloadDataset")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """What session 1 left on Kaggle: killed right after publishing step 50 (the fake's datasets, and the ref)."""
    work = tmp_path_factory.mktemp("session1")
    with FakeKaggle() as fake:
        killed = run(
            fit_args(*RESUME_FLAGS, "--config", str(kill_config(work, "KillAfterPublished", 50, publish_each=True))),
            work,
            cli_env(work / "home", fake.env(work)),
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        (ref,) = fake.datasets
        assert len(fake.versions(ref)) >= 3
        return copy.deepcopy(fake.state.datasets), ref


@pytest.fixture
def session_two(published, fake_kaggle, tmp_path):
    """Run session 2 (``fit --resume`` plus ``extra``) in a fresh folder against a fake holding session 1's datasets."""
    datasets, _ref = published
    fake_kaggle.state.datasets = copy.deepcopy(datasets)
    work = tmp_path / "session2"
    work.mkdir()

    def start(*extra: str):
        env = cli_env(work / "home", fake_kaggle.env(work))
        flags = ("--resume", "--restore.input_dir", str(work / "nothing-attached"), "--sync.retry_delay", "0.1")
        return run(fit_args(*RESUME_FLAGS, *flags, *extra), work, env)

    return work, start


def test_a_flaky_start_is_retried_and_the_run_goes_on_exactly(published, session_two, fake_kaggle, uninterrupted):
    work, start = session_two
    fake_kaggle.fail_next(1, status=500, methods="GetDatasetStatus")
    fake_kaggle.drop_next(1, methods="ListDatasetFiles")
    fake_kaggle.fail_next(1, status=429, methods="DownloadDataset", retry_after=1)
    resumed = start("--restore.timeout", "60s")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert fake_kaggle.faults.pending() == 0, "a fault was never met"
    assert resumed_step(output) == 50 and f"downloaded from kaggle:{published[1]}" in output
    assert min(e.global_step for e in read_manifest(work / "checkpoints").entries.values()) >= 50
    assert_same_training_state(
        load(newest_checkpoint(work / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )


def test_a_dataset_that_cannot_be_read_stops_the_run_in_one_line(published, session_two, fake_kaggle):
    work, start = session_two
    ref = published[1]
    versions = len(fake_kaggle.versions(ref))
    fake_kaggle.fail_next(10_000, status=503, methods=DATASET_RPCS)
    began = time.monotonic()
    refused = start("--restore.timeout", "5s")
    assert time.monotonic() - began < 120, "the look at the dataset was not bounded"
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --resume: could not read kaggle:{ref} (") and "HTTP 503" in last
    assert "--restore.download false" in last and "Add Data" in last
    assert "Traceback" not in refused.stderr
    assert not list((work / "checkpoints").glob("kaggle_epoch_*")), "a checkpoint was written"
    assert len(fake_kaggle.versions(ref)) == versions and not fake_kaggle.calls("CreateDatasetVersion")


def test_a_torn_newest_version_falls_back_to_the_one_before(published, session_two, fake_kaggle, uninterrupted):
    work, start = session_two
    ref = published[1]
    newest = fake_kaggle.versions(ref)[-1]
    (name,) = [n for n in newest.files if n.endswith(".ckpt")]
    data = newest.files[name]
    newest.files[name] = data[:-1] + bytes([data[-1] ^ 1])  # the same size, other bytes: a torn upload
    resumed = start()
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"Skipping {name} of kaggle:{ref} (version {newest.number}): sha256 differs" in output
    assert f"version {newest.number} holds no checkpoint that verifies" in output
    before = re.search(
        rf"Resuming from (kaggle_epoch_\S+) \(epoch \d+, step (\d+)\) downloaded from kaggle:{ref} "
        rf"\(version {newest.number - 1}\)",
        output,
    )
    assert before, output[-3000:]
    assert int(before[2]) < 50
    assert_same_training_state(
        load(newest_checkpoint(work / "checkpoints")), load(newest_checkpoint(uninterrupted / "checkpoints"))
    )
