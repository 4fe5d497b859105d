"""A test "Kaggle runner": plays the platform for the kernels pushed to the fake Kaggle server.

Each version pushed to run is taken as soon as it is queued and run locally the way a Kaggle batch session runs it:
a fresh folder standing for ``/kaggle`` (``LIGHTNING_APP_KAGGLE_ROOT``) with an empty ``working/`` (the current
folder) and the version's dataset sources laid out as ``input/datasets/<owner>/<slug>/`` (the newest version of
each, as the fake holds it), ``KAGGLE_KERNEL_RUN_TYPE=Batch``, ``LIGHTNING_APP_SESSION_START`` set to the session's
start, the Secrets through a stand-in ``kaggle_secrets`` module, and a session limit of seconds, after which every
process of the session is killed. Its status goes QUEUED -> RUNNING -> COMPLETE (exit 0) or ERROR, the GPU time it
took is charged to the fake's weekly quota when it asked for a GPU, and a session pushed meanwhile starts at once
(as on Kaggle, where nothing stops two versions running side by side but the product itself).

The install step is not run: a stand-in ``pip`` records its command line (`RunnerSession.install`), and the project
is imported from the repository. ``/kaggle/input`` is read-only on Kaggle but tests run as root, so the runner
checks instead that the session left its inputs untouched (names, sizes, modification times).

The callbacks below end a session at an exact point, as the platform would, when added to the launched ``fit``
with a config file (`session_config`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback

from tests.cli_helpers import cli_env
from tests.fake_kaggle import FakeKaggle

_KAGGLE_SECRETS = '''"""Stand-in for Kaggle's ``kaggle_secrets``: the kernel's Secrets are in the JSON file named by
KAGGLE_RUNNER_SECRETS; reading one that is not attached raises, as on Kaggle."""
import json
import os


class UserSecretsClient:
    def get_secret(self, label):
        path = os.environ.get("KAGGLE_RUNNER_SECRETS", "")
        values = json.load(open(path)) if path and os.path.exists(path) else {}
        if label not in values:
            raise Exception(f"No user secrets exist for label {label}")
        return values[label]
'''
_PIP_MAIN = '''"""Stand-in for ``python -m pip`` in a runner's session: records its arguments, installs nothing."""
import json
import os
import sys

with open(os.environ["KAGGLE_RUNNER_PIP_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
'''
#: Statuses the runner leaves a session in.
COMPLETE, ERROR = "COMPLETE", "ERROR"


@dataclass
class RunnerSession:
    """One session the runner ran.

    Attributes:
        ref, number: the kernel and its version.
        root: the session's ``/kaggle``; ``root/working`` its working folder and output.
        returncode: the script's exit status (negative: killed, e.g. at the session limit).
        started, ended: epoch seconds, as the runner started it and set its final status.
        status: the final status it was given.
        install: the install commands the script ran (the stand-in pip's arguments).
        touched_inputs: input files that changed during the session (should be none).
    """

    ref: str
    number: int
    root: Path
    accelerator: str | None
    sources: list[str]
    returncode: int | None = None
    started: float = 0.0
    ended: float = 0.0
    status: str = ""
    install: list[list[str]] = field(default_factory=list)
    touched_inputs: list[str] = field(default_factory=list)

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def output(self) -> str:
        path = self.root / "output.log"
        return path.read_text(errors="replace") if path.exists() else ""


class KaggleRunner:
    """Runs every session pushed to ``fake`` (see the module's docstring).

    Args:
        fake: the fake Kaggle server.
        folder: where the sessions' folders go.
        secrets: the Secrets attached to the kernel (default: the fake's username and key); ``{}`` for none.
        session_limit: seconds after which a session is killed, as the platform ends one at its limit.
    """

    def __init__(
        self, fake: FakeKaggle, folder: Path, *, secrets: dict[str, str] | None = None, session_limit: float = 240.0
    ) -> None:
        self.fake = fake
        self.folder = folder
        self.session_limit = session_limit
        self.sessions: list[RunnerSession] = []
        self._running: set[tuple[str, int]] = set()
        self._stubs = folder / "stubs"
        (self._stubs / "pip").mkdir(parents=True, exist_ok=True)
        (self._stubs / "kaggle_secrets.py").write_text(_KAGGLE_SECRETS)
        (self._stubs / "pip" / "__init__.py").write_text("")
        (self._stubs / "pip" / "__main__.py").write_text(_PIP_MAIN)
        self.secrets_file = folder / "secrets.json"
        chosen = {"KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": fake.key} if secrets is None else secrets
        self.secrets_file.write_text(json.dumps(chosen))

    def run_until_idle(self, timeout: float = 600.0) -> list[RunnerSession]:
        """Run each queued session as it comes, until none is queued and none runs; the sessions run, in order."""
        kernels = self.fake.state.kernels
        deadline = time.monotonic() + timeout
        ran: list[RunnerSession] = []
        with kernels.changed:
            while True:
                left = deadline - time.monotonic()
                kernels.changed.wait_for(lambda: kernels.queued() or not self._running, timeout=max(0.0, left))
                waiting = kernels.queued()
                if waiting:
                    version = waiting[0]
                    kernels.set_status(version.ref, version.number, "RUNNING")
                    session = RunnerSession(
                        version.ref, version.number, self.folder / f"v{version.number}", version.accelerator,
                        list(version.dataset_sources), started=time.time(),
                    )  # fmt: skip
                    self._running.add((version.ref, version.number))
                    ran.append(session)
                    self.sessions.append(session)
                    source = version.source
                    threading.Thread(target=self._run, args=(session, source), daemon=True).start()
                    continue
                if not self._running:
                    return ran
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"sessions still running after {timeout:.0f} s: {sorted(self._running)}")

    def _run(self, session: RunnerSession, source: str) -> None:
        status = ERROR
        try:
            status = self._session(session, source)
        finally:
            with self.fake.state.lock:
                session.ended = time.time()
                session.status = status
                if session.accelerator and session.accelerator.startswith("Nvidia"):
                    quota = self.fake.state.kernels.gpu_quota
                    if quota is not None:
                        quota.used += session.ended - session.started
                self.fake.state.kernels.set_status(session.ref, session.number, status)  # notifies the runner
                self._running.discard((session.ref, session.number))

    def _session(self, session: RunnerSession, source: str) -> str:
        root = session.root
        working, inputs = root / "working", root / "input"
        working.mkdir(parents=True)
        inputs.mkdir()
        for ref in session.sources:
            owner, slug = ref.split("/")
            folder = inputs / "datasets" / owner / slug
            folder.mkdir(parents=True)
            for name, data in self.fake.versions(ref)[-1].files.items():
                (folder / name).write_bytes(data)
        before = _listing(inputs)
        script = root / "src" / "script.py"
        script.parent.mkdir()
        script.write_text(source)
        env = self._env(root)
        with open(root / "output.log", "wb") as output:
            process = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=working,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                session.returncode = process.wait(timeout=self.session_limit)
            except subprocess.TimeoutExpired:
                _kill_session(root)
                session.returncode = process.wait()
        _kill_session(root)  # whatever the session started and left behind dies with its container
        pip_log = root / "pip.log"
        if pip_log.exists():
            session.install = [json.loads(line) for line in pip_log.read_text().splitlines()]
        after = _listing(inputs)
        session.touched_inputs = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
        return COMPLETE if session.returncode == 0 else ERROR

    def _env(self, root: Path) -> dict[str, str]:
        fake_env = self.fake.env(root / "client")
        fake_env["PYTHONPATH"] = os.pathsep.join([str(self._stubs), fake_env["PYTHONPATH"]])
        env = cli_env(root / "home", fake_env)
        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):  # the kernel's credentials are its Secrets, nothing else
            env.pop(name, None)
        env.update(
            KAGGLE_KERNEL_RUN_TYPE="Batch",
            LIGHTNING_APP_SESSION_START=f"{time.time():.3f}",
            LIGHTNING_APP_KAGGLE_ROOT=str(root),
            KAGGLE_RUNNER_SECRETS=str(self.secrets_file),
            KAGGLE_RUNNER_PIP_LOG=str(root / "pip.log"),
        )
        return env


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def _kill_session(root: Path) -> None:
    """SIGKILL every process of the session (its environment names its root), as a container's end would: the
    script's group, and the children that run in groups of their own (each Kaggle call)."""
    marker = f"LIGHTNING_APP_KAGGLE_ROOT={root}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)


# -- the platform ending a session at an exact point (added to the launched fit with `session_config`) -------------


class EndSessionAfterSteps(Callback):
    """SIGTERM this process after ``steps`` training steps of this session: the session's budget running out, at a
    step rather than a time (the deadline's own signal path saves and publishes, and ``fit`` returns)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._first: int | None = None
        self._sent = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if self._first is None:
            self._first = trainer.global_step - 1
        if not self._sent and trainer.global_step - self._first >= self.steps:
            self._sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class KillSessionAfterPublished(Callback):
    """Once, across sessions (``marker`` is created): SIGKILL the whole session (this process's group: the script
    and ``fit``) as soon as the checkpoint of ``global_step`` is published."""

    def __init__(self, global_step: int, marker: str) -> None:
        self.global_step = global_step
        self.marker = Path(marker)
        self._sync = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from callbacks.checkpoint import KaggleModelCheckpoint
        from callbacks.kaggle_sync import KaggleDatasetSync

        self._sync = next(cb for cb in trainer.callbacks if isinstance(cb, KaggleDatasetSync))
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, KaggleModelCheckpoint):
                callback.add_listener(self._on_saved)

    def _on_saved(self, saved) -> None:
        if saved.entry.global_step >= self.global_step and not self.marker.exists():
            assert self._sync.publisher.flush(120), "the checkpoint was not published"
            self.marker.touch()
            os.killpg(os.getpgid(0), signal.SIGKILL)


def session_config(folder: Path, name: str, callbacks: list[tuple[str, dict]]) -> Path:
    """A config file adding runner callbacks (``[(class name, init args)]``) to ``trainer.callbacks``."""
    path = folder / f"{name}.yaml"
    listed = [{"class_path": f"tests.support.kaggle_runner.{kind}", "init_args": args} for kind, args in callbacks]
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": listed}}))
    return path
