"""Run the real CLI as a subprocess, the way a user's notebook cell does, and read what it left behind."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tests.support.fork_server import ForkedProcess, ForkServer

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"

#: smoke.yaml has 32 steps per epoch and 3 epochs; resume tests add a step checkpoint every 10 steps.
RESUME_FLAGS = (
    "--checkpoint.every_n_train_steps",
    "10",
    "--checkpoint.keep_last",
    "10",
    "--trainer.enable_progress_bar",
    "false",
)


def cli_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment with no Kaggle credentials from the developer's machine, and the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "FAKE_KAGGLE"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), PYTHONUNBUFFERED="1")
    # One torch thread: a tiny model trains faster so on 2 cores, beside the writer thread and the upload child.
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    if extra and "PYTHONPATH" in extra:  # e.g. the fake Kaggle server's sitecustomize first, then the repo
        env["PYTHONPATH"] = os.pathsep.join((extra["PYTHONPATH"], str(REPO)))
    return env


def fit_args(*extra: str, config: Path = SMOKE) -> list[str]:
    return [sys.executable, "-m", "lightning_app", "fit", "--config", str(config), *extra]


#: Set by ``tests/conftest.py``: CLI runs fork from a warm interpreter (`tests.support.fork_server`).
FORK_SERVER_ENABLED = False
_fork_server: ForkServer | None = None


def fork_server() -> ForkServer | None:
    """The session's fork server, started at first use; None outside the test suite (``benchmarks.gpu_check``)."""
    global _fork_server
    if FORK_SERVER_ENABLED and _fork_server is None:
        _fork_server = ForkServer.start(REPO)
    return _fork_server


def stop_fork_server() -> None:
    global _fork_server
    if _fork_server is not None:
        _fork_server.stop()
        _fork_server = None


def _cli_argv(args: list[str]) -> list[str] | None:
    """``python -m lightning_app ARGS`` -> ARGS, for a forked run; None for any other command."""
    prefix = [sys.executable, "-m", "lightning_app"]
    return args[len(prefix) :] if args[: len(prefix)] == prefix and fork_server() is not None else None


def _launch(
    args: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path, new_session=False, fresh=False
) -> subprocess.Popen | ForkedProcess:
    """Start ``args`` with its output appended to files; the CLI forks from the warm interpreter unless ``fresh``
    (a test of start-up itself)."""
    argv = None if fresh else _cli_argv(args)
    if argv is not None:
        return fork_server().spawn(argv, cwd, env, stdout, stderr, new_session)
    with open(stdout, "a") as out, open(stderr, "a") as err:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=new_session)


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run a command to its end with its output captured (killed after ``timeout``, as `subprocess.run` does)."""
    with tempfile.TemporaryDirectory(prefix="cli-run-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = _launch(args, cwd, env, out, err, fresh=fresh)
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(args, returncode, _read(out), _read(err))


def start(args: list[str], cwd: Path, env: dict[str, str], output: Path) -> subprocess.Popen | ForkedProcess:
    """Start a command with stdout and stderr appended to ``output``; for a test that signals it while it runs."""
    return _launch(args, cwd, env, output, output)


def run_in_group(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`run` in a process group of its own, killed whole afterwards: a SIGKILLed DDP rank 0 leaves its peers
    behind (the group outlives its leader: pgid == leader's pid). stdout and stderr together in ``stdout``."""
    with tempfile.TemporaryDirectory(prefix="cli-run-") as folder:
        output = Path(folder) / "output"
        process = _launch(args, cwd, env, output, output, new_session=True)
        try:
            returncode = process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(args, returncode, _read(output), "")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def newest_checkpoint(folder: Path) -> Path:
    from lightning_app.persistence.folder import read_manifest

    manifest = read_manifest(folder)
    assert manifest is not None and manifest.entries, f"no manifest in {folder}"
    return folder / manifest.newest_first()[0].file


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Weights and optimizer state equal tensor by tensor, bit for bit; same step and epoch."""
    assert a["global_step"] == b["global_step"]
    assert a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"weights differ at {key}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                other = opt_b["state"][index][name]
                same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
                assert same, f"optimizer state {index}.{name} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]


def train_losses(logs: Path) -> dict[int, str]:
    """step -> train_loss as logged (the CSV text, so equality is exact), over every metrics.csv under ``logs``."""
    losses: dict[int, str] = {}
    for path in sorted(logs.rglob("metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train_loss"):
                    losses[int(row["step"])] = row["train_loss"]
    return losses


def resumed_step(output: str) -> int:
    """The step of the checkpoint the run's ``Resuming from ...`` line names."""
    match = re.search(r"Resuming from kaggle_epoch_\d+_[\d-]+\.ckpt \(epoch \d+, step (\d+)\)", output)
    assert match, output[-3000:]
    return int(match[1])
