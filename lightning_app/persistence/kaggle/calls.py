"""The parent's side of a Kaggle call: one operation in a child process (``child.py``), killed with its whole
process group when its time is up, and its `CallResult` read back.

The ``kaggle`` client has no timeouts and a thread stuck in it cannot be cancelled, so ``KaggleDatasetStore``
makes every call through `ChildCalls`. Children still running at interpreter exit are killed too, so no
abandoned upload can become the newest version after the run ended.

Inside a Kaggle notebook, when the credential the client prefers (a token) is refused, or refused permission to
write, the user's Secrets are tried once (`credentials.secrets_fallback`); the log says which one publishes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle.credentials import find_credentials, redact_secrets, secrets_fallback
from lightning_app.persistence.kaggle.outcomes import CallResult, FailureKind, Operation
from lightning_app.persistence.store import StoreError, TransientError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
#: Every running child of every store, killed at interpreter exit (a daemon worker's child would outlive us).
_LIVE: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
log = logging.getLogger("lightning_app.sync")


class ChildCalls:
    """Runs ``python -m lightning_app.persistence.kaggle.child <operation> <args.json> <result.json>`` per call.

    Args:
        description: the store's name for error messages (``kaggle:owner/slug``).
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._children: set[subprocess.Popen] = set()
        self._cancelled_at = float("-inf")  # calls begun before this monotonic time start no more children
        self._cancelled = threading.Condition(_LIVE_LOCK)
        #: Environment changes for every child (``None`` removes a variable): set when falling back to Secrets.
        self.env_changes: dict[str, str | None] = {}
        self._fallback_tried = False
        self._fallback_source = ""

    def cancel(self) -> None:
        """Kill the children running now (with their process groups); calls begun before now start no more."""
        with _LIVE_LOCK:
            self._cancelled_at = time.monotonic()
            children = list(self._children)
            self._cancelled.notify_all()
        for process in children:
            _kill(process)

    def wait(self, seconds: float, since: float) -> bool:
        """Sleep ``seconds`` unless ``cancel()`` comes (or came) after ``since``; True when cancelled."""
        with self._cancelled:
            return self._cancelled.wait_for(lambda: self._cancelled_at >= since, timeout=seconds)

    def run(self, op: Operation, args: dict[str, Any], bound: float, since: float | None = None) -> CallResult:
        """The child's `CallResult`; a timeout, a kill or a missing result raise ``TransientError``/``StoreError``.

        ``since``: when the operation began; if ``cancel()`` came after that, no child is started. A refused
        credential is retried once with the notebook's Secrets, when there are any.
        """
        result = self._run_once(op, args, bound, since)
        if not result.ok and self._fall_back(op, result):
            result = self._run_once(op, args, bound, since)
            source = self._fallback_source
            if result.ok:
                log.warning(f"{self.description}: {source} work: they publish from now on")
            else:
                self.env_changes = {}  # back to the preferred credential: it may still read
                result = replace(result, message=f"{result.message} (with {source} too)")
        return result

    def _fall_back(self, op: Operation, result: CallResult) -> bool:
        """Switch to the notebook's Secrets (once per store) after a refusal they might not get."""
        denied = result.kind is FailureKind.REFUSED and result.status == 403 and op.writes
        if self._fallback_tried or not (result.kind is FailureKind.AUTH or denied):
            return False
        self._fallback_tried = True
        fallback = secrets_fallback()
        if fallback is None:
            return False
        preferred = find_credentials()
        log.warning(
            f"{self.description}: Kaggle refused {preferred.source if preferred else 'the credentials'} "
            f"({result.message}); trying {fallback.credentials.source} instead"
        )
        self.env_changes, self._fallback_source = fallback.env, fallback.credentials.source
        return True

    def _run_once(self, op: Operation, args: dict[str, Any], bound: float, since: float | None) -> CallResult:
        with tempfile.TemporaryDirectory(prefix="kaggle-call-") as tmp:
            args_path, result_path, log_path = (Path(tmp) / n for n in ("args.json", "result.json", "stderr.txt"))
            args_path.write_text(json.dumps(args))
            command = [sys.executable, "-m", "lightning_app.persistence.kaggle.child", op.value, str(args_path)]
            with open(log_path, "wb") as log, _LIVE_LOCK:  # under the lock: cancel() sees every child
                if since is not None and self._cancelled_at >= since:
                    raise TransientError(f"{self.description}: {op.value} cancelled")
                process = subprocess.Popen(
                    [*command, str(result_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # "Dataset URL: ..." and other chatter
                    stderr=log,
                    env=_child_env(self.env_changes),
                    start_new_session=True,  # its own process group: killing it kills anything it started
                )
                self._children.add(process)
                _LIVE.add(process)
            try:
                returncode = process.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                raise TransientError(f"{self.description}: {op.value} timed out after {bound:.1f} s") from None
            finally:
                _kill(process)
                with _LIVE_LOCK:
                    self._children.discard(process)
            if not result_path.exists():
                tail = log_path.read_text(errors="replace")[-800:].strip()
                tail = redact_secrets(tail, [self.env_changes.get("KAGGLE_KEY")])
                error = TransientError if returncode < 0 else StoreError
                raise error(f"{self.description}: {op.value} exited with code {returncode} and no result: {tail}")
            return CallResult.from_json(json.loads(result_path.read_text()))


def _child_env(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment (credentials, TMPDIR for the upload cache, proxies) with ``changes``, able to
    import us."""
    env = {name: value for name, value in {**os.environ, **changes}.items() if value is not None}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*paths, _PACKAGE_ROOT])
    return env


def _kill(process: subprocess.Popen) -> None:
    """Kill the child's process group if it is still running, and reap it."""
    if process.poll() is None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                process.kill()
        except ProcessLookupError:
            pass
    process.wait()


@atexit.register
def _kill_live_children() -> None:
    with _LIVE_LOCK:
        children = list(_LIVE)
    for process in children:
        _kill(process)
