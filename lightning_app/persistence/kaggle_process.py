"""One ``kaggle_calls`` operation in a child process, killed (with its whole process group) when its time is up.

The ``kaggle`` client has no timeouts and a thread stuck in it cannot be cancelled, so ``KaggleDatasetStore``
runs every operation through `ChildCalls`. Children still running at interpreter exit are killed too, so no
abandoned upload can become the newest version after the run ended.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from lightning_app.persistence.credentials import redact_secrets
from lightning_app.persistence.store_protocol import StoreError, TransientError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Every running child of every store, killed at interpreter exit (a daemon worker's child would outlive us).
_LIVE: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class ChildCalls:
    """Runs ``python -m lightning_app.persistence.kaggle_calls <op> <args.json> <result.json>`` per call.

    Args:
        description: the store's name for error messages (``kaggle:owner/slug``).
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._children: set[subprocess.Popen] = set()
        self._cancelled_at = float("-inf")  # calls begun before this monotonic time start no more children

    def cancel(self) -> None:
        """Kill the children running now (with their process groups); calls begun before now start no more."""
        with _LIVE_LOCK:
            self._cancelled_at = time.monotonic()
            children = list(self._children)
        for process in children:
            _kill(process)

    def run(self, op: str, args: dict[str, Any], bound: float, since: float | None = None) -> dict[str, Any]:
        """The child's result file (``{"ok": ...}``); a timeout, a kill or a missing result raise.

        ``since``: when the operation began; if ``cancel()`` came after that, no child is started.
        """
        with tempfile.TemporaryDirectory(prefix="kaggle-call-") as tmp:
            args_path, result_path, log_path = (Path(tmp) / n for n in ("args.json", "result.json", "stderr.txt"))
            args_path.write_text(json.dumps(args))
            command = [sys.executable, "-m", "lightning_app.persistence.kaggle_calls", op, str(args_path)]
            with open(log_path, "wb") as log, _LIVE_LOCK:  # under the lock: cancel() sees every child
                if since is not None and self._cancelled_at >= since:
                    raise TransientError(f"{self.description}: {op} cancelled")
                process = subprocess.Popen(
                    [*command, str(result_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # "Dataset URL: ..." and other chatter
                    stderr=log,
                    env=_child_env(),
                    start_new_session=True,  # its own process group: killing it kills anything it started
                )
                self._children.add(process)
                _LIVE.add(process)
            try:
                returncode = process.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                raise TransientError(f"{self.description}: {op} timed out after {bound:.1f} s") from None
            finally:
                _kill(process)
                with _LIVE_LOCK:
                    self._children.discard(process)
            if not result_path.exists():
                tail = redact_secrets(log_path.read_text(errors="replace")[-800:].strip())
                error = TransientError if returncode < 0 else StoreError
                raise error(f"{self.description}: {op} exited with code {returncode} and no result: {tail}")
            return json.loads(result_path.read_text())


def _child_env() -> dict[str, str]:
    """This process's environment (credentials, TMPDIR for the upload cache, proxies), able to import us."""
    env = dict(os.environ)
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
