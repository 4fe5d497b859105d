"""Closing the publisher (or exiting) kills a Kaggle call still running, with its process group; nothing outlives us."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_app.persistence.kaggle.store import KaggleDatasetStore
from lightning_app.persistence.manifest import CheckpointEntry
from lightning_app.persistence.publisher import BackgroundPublisher, PublishJob
from tests.cli_helpers import REPO, cli_env, fit_args, run
from tests.support.waiting import wait_for

REF = "fake-user/lm-checkpoints"


def _stage(tmp_path: Path, name: str) -> PublishJob:
    folder = tmp_path / "staging" / name
    folder.mkdir(parents=True)
    (folder / f"{name}.ckpt").write_bytes(b"x" * 10)
    return PublishJob(folder, name, CheckpointEntry(f"{name}.ckpt", 0, 1, "20261202-000000"))


def _gone(pid: int) -> bool:
    """True when neither the process nor its process group exists (it has been reaped, too)."""
    for check in (os.kill, os.killpg):
        try:
            check(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_close_kills_the_hung_call_and_discards_the_waiting_job(kaggle_env, fake_kaggle, tmp_path):
    store = KaggleDatasetStore(REF, call_timeout=60.0)
    fake_kaggle.hang_next(1)  # the child's first request, whatever it is
    publisher = BackgroundPublisher(store, attempts=6, base_delay=60.0, max_delay=600.0)
    first, second = _stage(tmp_path, "first"), _stage(tmp_path, "second")
    publisher.submit(first)
    child = wait_for(lambda: next(iter(store._calls._children), None), what="kaggle call child")
    wait_for(lambda: fake_kaggle.faults.pending() == 0, what="hung request")
    publisher.submit(second)  # waits behind the hung one
    assert publisher.flush(timeout=0.5) is False
    start = time.monotonic()
    publisher.close()
    assert time.monotonic() - start < 10
    assert child.returncode is not None and _gone(child.pid)
    assert not second.folder.exists()  # never ran: discarded
    assert not first.folder.exists()  # its call was killed: discarded by the worker before close returned
    assert not publisher._thread.is_alive()


def test_store_cancel_ends_the_publish_in_progress(kaggle_env, fake_kaggle, tmp_path):
    store = KaggleDatasetStore(REF, call_timeout=60.0)
    fake_kaggle.hang_next(1)
    job = _stage(tmp_path, "only")
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            store.publish(job.folder, "only")
        except BaseException as error:  # noqa: BLE001 - recorded for the assert
            errors.append(error)

    thread = threading.Thread(target=publish)
    thread.start()
    child = wait_for(lambda: next(iter(store._calls._children), None), what="kaggle call child")
    store.cancel()
    thread.join(10)
    assert not thread.is_alive() and errors and _gone(child.pid)


SCRIPT = """
import sys, threading, time
from pathlib import Path
from lightning_app.persistence.kaggle import store as kaggle_store
store = kaggle_store.KaggleDatasetStore("fake-user/lm-checkpoints", call_timeout=60.0)
threading.Thread(target=store.publish, args=(Path(sys.argv[1]), "n"), daemon=True).start()
while not store._calls._children:
    time.sleep(0.05)
print(next(iter(store._calls._children)).pid, flush=True)
"""


def test_a_call_running_at_interpreter_exit_is_killed(kaggle_env, fake_kaggle, tmp_path):
    fake_kaggle.hang_next(1)
    job = _stage(tmp_path, "exit")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((os.environ["PYTHONPATH"], str(REPO)))}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(job.folder)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pid = int(result.stdout.split()[0])
    wait_for(lambda: _gone(pid), timeout=5, what="end of the abandoned child")


def _kaggle_calls_under(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "lightning_app.persistence.kaggle.child" in text and str(path) in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_cli_run_leaves_no_kaggle_call_behind(tmp_path, fake_kaggle):
    fake_kaggle.hang_next(1000)  # every request of every publish hangs
    env = cli_env(tmp_path / "home", fake_kaggle.env(tmp_path))
    args = fit_args("--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false")
    args += ["--sync.flush_timeout", "2s", "--sync.call_timeout", "120"]
    result = run(args, tmp_path, env, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Final checkpoint kaggle_epoch_0_" in output and " NOT published: " in output, output[-3000:]
    assert _kaggle_calls_under(tmp_path) == []
