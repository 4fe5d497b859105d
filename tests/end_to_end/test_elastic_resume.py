"""A run resumed on another number of devices (CPU, gloo): killed mid-epoch on 2 ranks and resumed on 1 device, or
on 1 device and resumed on 2 ranks, it ends bit for bit where the run never interrupted ends (weights, optimizer
state, schedule, the logged training loss); resumed on 3 ranks, it takes the same samples per step and says in one
line that it is no longer bit-exact.

smoke.yaml keeps 2 canonical ranks on any number of devices: the global batch is 2 x 8 whether one device runs
both canonical micro-batches or two ranks run one each; with 256 sequences an epoch is 16 steps on any of them.

Threads: every process of these runs has one torch thread (``cli_env`` sets ``OMP_NUM_THREADS=1``). CPU kernels
may split their work, and round, differently with another number of threads, so one device running both canonical
micro-batches computes each exactly as a rank of the 2-rank run does only with the same thread count per process.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
from pathlib import Path

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
    run_in_group,
    train_losses,
)
from tests.support.batch_record import record_config, samples_per_step
from tests.support.kill_switch import kill_config

pytestmark = pytest.mark.slow

SHORT = ("--trainer.max_epochs", "2", "--data.num_train_sequences", "256")  # 32 steps: two epochs of 16
TWO_RANKS = ("--trainer.devices", "2", "--trainer.strategy", "ddp")
THREE_RANKS = ("--trainer.devices", "3", "--trainer.strategy", "ddp")


def _fit(work: Path, *extra: str, group: bool = False) -> subprocess.CompletedProcess:
    """One session in ``work`` (its own home: a fresh machine); DDP runs in a process group killed afterwards."""
    args = fit_args(*RESUME_FLAGS, *SHORT, *extra)
    env = cli_env(work / "home")
    result = run_in_group(args, work, env) if group else run(args, work, env)
    if group:  # run_in_group puts stdout and stderr together in stdout
        result.stderr = result.stdout
    return result


def _rows(logs: Path) -> list[tuple[int, str]]:
    """(step, train_loss) of every logged training loss, in file order."""
    (path,) = logs.rglob("metrics.csv")
    with open(path, newline="") as f:
        return [(int(row["step"]), row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """2 ranks, never interrupted, recording which samples each rank trains on at each step."""
    work = tmp_path_factory.mktemp("two_ranks")
    done = _fit(work, *TWO_RANKS, "--config", str(record_config(work, work / "records")), group=True)
    assert done.returncode == 0, done.stdout[-3000:]
    return work


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> Path:
    """1 device (running both canonical micro-batches), never interrupted."""
    work = tmp_path_factory.mktemp("one_device")
    done = _fit(work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def _killed(work: Path, step: int, *devices: str) -> int:
    """Run until SIGKILLed right after the step-``step`` checkpoint is complete; the newest checkpoint's step."""
    killed = _fit(work, *devices, "--config", str(kill_config(work, "KillAfterCheckpoint", step)), group=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    return max(e.global_step for e in read_manifest(work / "checkpoints").entries.values())


def _session(work: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """What the killed session left: its checkpoint files and its logged losses."""
    files = {e.file for e in read_manifest(work / "checkpoints").entries.values()}
    return files, _rows(work / "logs")


def _assert_resumed_exactly(work: Path, output: str, step: int, first_session: tuple, reference: Path) -> None:
    """The resumed session started at ``step`` and ends as ``reference`` (a never interrupted run's folder) ends."""
    first_files, first_rows = first_session
    assert resumed_step(output) == step
    new = [e for e in read_manifest(work / "checkpoints").entries.values() if e.file not in first_files]
    assert new and all(e.global_step > step for e in new), "the resumed run saved at or before its start"
    # The resumed session continues the killed session's metrics file from the checkpoint's step: the rows
    # before it stay; a row the killed session logged after its checkpoint (training went on while the checkpoint
    # was written) is replaced by the resumed session's.
    rows = _rows(work / "logs")
    before = [row for row in first_rows if row[0] < step]
    assert rows[: len(before)] == before
    assert len({s for s, _ in rows}) == len(rows), "a step's row is in the metrics file twice"
    second_session = dict(rows[len(before) :])
    assert min(second_session) == step, "the resumed session did not start at the checkpoint's step"
    assert second_session == {s: v for s, v in train_losses(reference / "logs").items() if s >= step}
    assert_same_training_state(
        load(newest_checkpoint(work / "checkpoints")), load(newest_checkpoint(reference / "checkpoints"))
    )


def test_one_device_ends_bit_for_bit_where_two_ranks_end(one_device, two_ranks):
    assert_same_training_state(
        load(newest_checkpoint(one_device / "checkpoints")), load(newest_checkpoint(two_ranks / "checkpoints"))
    )
    assert train_losses(one_device / "logs") == train_losses(two_ranks / "logs")  # canonical rank 0's, step by step


def test_two_ranks_killed_mid_epoch_resume_on_one_device_bit_for_bit(tmp_path, two_ranks):
    step = _killed(tmp_path, 10, *TWO_RANKS)
    assert step == 10  # mid-epoch 0
    first_session = _session(tmp_path)
    resumed = _fit(tmp_path, "--resume")  # one device
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    line = (
        "Resuming the run's 2 canonical ranks on 1 device (2 canonical micro-batches each): bit for bit as on 2 devices"
    )
    assert output.count(line) == 1
    assert "not bit-exact" not in output and "RNG state:" not in output
    _assert_resumed_exactly(tmp_path, output, step, first_session, two_ranks)


def test_one_device_killed_mid_epoch_resumes_on_two_ranks_bit_for_bit(tmp_path, one_device):
    step = _killed(tmp_path, 20)
    assert step == 20  # mid-epoch 1
    first_session = _session(tmp_path)
    resumed = _fit(tmp_path, "--resume", *TWO_RANKS, group=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert resumed.stdout.count("Resuming the run's 2 canonical ranks on 2 devices: bit for bit as on 2 devices") == 1
    assert "saved position" not in resumed.stdout and "Traceback" not in resumed.stdout
    _assert_resumed_exactly(tmp_path, resumed.stdout, step, first_session, one_device)


def test_three_ranks_take_the_same_samples_per_step_and_say_it_is_not_bit_exact(tmp_path, two_ranks):
    shutil.copytree(two_ranks / "checkpoints", tmp_path / "checkpoints")
    (start,) = [e for e in read_manifest(tmp_path / "checkpoints").entries.values() if e.global_step == 20]
    records = tmp_path / "records"
    resumed = _fit(
        tmp_path,
        *THREE_RANKS,
        "--resume",
        str(tmp_path / "checkpoints" / start.file),
        "--config",
        str(record_config(tmp_path, records)),
        group=True,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert resumed_step(resumed.stdout) == 20  # mid-epoch 1
    lines = [line for line in resumed.stdout.splitlines() if "bit-exact" in line]
    assert lines == [
        "Resuming the run's 2 canonical ranks on 3 devices: the same 16 samples per step, re-split over the devices; "
        "not bit-exact (dropout streams and gradient sums differ)"
    ]
    reference = samples_per_step(two_ranks / "records", 2)
    resplit = samples_per_step(records, 3)
    assert sorted(resplit) == list(range(20, 32))
    assert all(resplit[step] == reference[step] for step in resplit), "a step took other samples, or in another order"
    shares = [len(samples_per_step(records, 3, only_rank=rank)[20]) for rank in range(3)]
    assert shares == [5, 5, 6]  # 16 samples over 3 ranks: [0, 5), [5, 10), [10, 16)
    assert load(newest_checkpoint(tmp_path / "checkpoints"))["global_step"] == 32


def test_a_fresh_start_on_devices_that_do_not_divide_the_canonical_ranks_is_one_line(tmp_path):
    done = _fit(tmp_path, *TWO_RANKS, "--data.canonical_ranks", "3", group=True)
    assert done.returncode == 2, done.stdout[-3000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    expected = "error: --data.canonical_ranks: got 3; expected a multiple of the 2 devices (e.g. 4), or at most 2"
    assert errors == [expected]  # rank 0 says it; rank 1 stops at the same point without a word
    assert "Traceback" not in done.stdout and not list((tmp_path / "checkpoints").glob("*.ckpt"))
