"""A warm interpreter for the tests' CLI runs: ``python -m lightning_app ...`` without 5-7 s of imports each time.

Importing torch and Lightning takes most of a tiny CLI run on a 2-core machine, and the suite starts the CLI about
a hundred times. This server imports ``lightning_app.commands.fit`` once, then forks for each run: the child is a
process of its own (its own pid and process group, SIGKILL kills it alone, its exit status is what the test sees)
that sets the run's working directory, environment and output files and runs ``lightning_app`` as ``python -m`` would
(``runpy``, ``__main__``, ``sys.argv``), then exits as the interpreter does (threads joined, exit handlers run)
but skips the teardown of every module (a second more). What differs from a fresh process is only that: the
imports are done already, and the modules are not torn down. Child processes the CLI starts (DDP ranks, Kaggle
calls) are fresh interpreters, as in production; tests of start-up itself run the CLI fresh.

Each run is forked by a waiter process, forked from the server: the waiter reports the child's pid, waits for it
and reports its exit status (negative: killed by that signal) on the run's Unix socket, as ``Popen`` would.

Usage (``tests/cli_helpers`` starts one at the first CLI run of a session; ``tests/conftest.py`` stops it)::

    server = ForkServer.start(repo)
    process = server.spawn(["fit", "--config", "configs/smoke.yaml"], cwd, env, stdout_path, stderr_path)
    returncode = process.wait(timeout=300)
    server.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

READY = "ready"


class ForkedProcess:
    """One CLI run forked by the server: ``pid``, ``wait``, ``send_signal``, ``kill``, like a ``Popen``."""

    def __init__(self, connection: socket.socket, args: list[str]) -> None:
        self.args = args
        self._connection = connection
        self._received = b""
        self.pid = int(self._line(timeout=60))
        self.returncode: int | None = None

    def _line(self, timeout: float | None) -> str:
        """The waiter's next line: the child's pid, then its exit status."""
        self._connection.settimeout(timeout)
        while b"\n" not in self._received:
            try:
                chunk = self._connection.recv(64)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            if not chunk:
                raise RuntimeError("the fork server's waiter for this run went away")
            self._received += chunk
        line, self._received = self._received.split(b"\n", 1)
        return line.decode()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._connection.close()
        return self.returncode

    def poll(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.wait(timeout=0.001)
        return None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The server process, seen from the tests."""

    def __init__(self, process: subprocess.Popen, path: Path) -> None:
        self._process, self.path = process, path

    @classmethod
    def start(cls, repo: Path) -> ForkServer:
        folder = Path(tempfile.mkdtemp(prefix="fork-server-"))
        path = folder / "socket"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fork_server", str(path)],
            cwd=repo,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if process.stdout.readline().strip() != READY:
            process.kill()
            raise RuntimeError("the fork server did not start")
        return cls(process, path)

    def spawn(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        new_session: bool = False,
    ) -> ForkedProcess:
        """Run ``python -m lightning_app *argv`` in a forked child; its output goes to ``stdout``/``stderr``."""
        request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        request["new_session"] = new_session
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(self.path))
        connection.sendall((json.dumps(request) + "\n").encode())
        return ForkedProcess(connection, [sys.executable, "-m", "lightning_app", *argv])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # the server exits when its stdin closes
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        shutil.rmtree(self.path.parent, ignore_errors=True)


# -- the server process ------------------------------------------------------------------------------------------


def _serve(path: str) -> dict:
    """Accept runs until stdin closes; returns (in a forked child only) the request that child is to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print(READY, flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            os._exit(0)  # the tests are done (or gone)
        if listener not in readable:
            continue
        connection, _ = listener.accept()
        request = json.loads(connection.makefile("r").readline())
        if os.fork() == 0:  # the waiter
            listener.close()
            pid = os.fork()
            if pid == 0:
                connection.close()
                return request
            with contextlib.suppress(OSError):  # the test may have given up on this run
                connection.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            os._exit(0)
        connection.close()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap finished waiters
                pass


def _become(request: dict) -> None:
    """In the forked child: take the run's session, directory, environment and output, as a fresh process has."""
    import runpy
    import tempfile
    import time

    import torch

    import lightning_app

    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # read TMPDIR again
    entries = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *entries, *(p for p in sys.path[1:] if p not in entries)]
    with open(os.devnull) as stdin:
        os.dup2(stdin.fileno(), 0)
    with open(request["stdout"], "a") as out:
        os.dup2(out.fileno(), 1)
    with open(request["stderr"], "a") as err:
        os.dup2(err.fileno(), 2)
    if threads := os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(threads))  # what torch reads from the environment at start-up
    lightning_app.IMPORTED_AT = time.time()  # as in a fresh process (its start comes from /proc/self first)
    sys.argv = ["-m", *request["argv"]]
    try:
        runpy.run_module("lightning_app", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code
        if not (code is None or isinstance(code, int)):
            print(code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
            code = 1
        _exit(code or 0)
    except KeyboardInterrupt:
        _exit(-signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # the traceback, as the interpreter prints it
        _exit(1)
    _exit(0)


def _exit(code: int) -> None:
    """Exit as a fresh process does, but for its last second: the interpreter joins the non-daemon threads and runs
    the exit handlers (``Py_FinalizeEx``'s first steps, the same calls here), then tears down every module (torch's
    and Lightning's take about a second), which no test needs; this process ends there instead."""
    import atexit
    import threading

    threading._shutdown()  # noqa: SLF001 - what the interpreter calls first at exit
    atexit._run_exitfuncs()  # noqa: SLF001 - then this
    sys.stdout.flush()
    sys.stderr.flush()
    if code == -signal.SIGINT:  # Python dies of the signal it did not handle
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__":
    import lightning_app.commands.fit  # noqa: F401 - the imports every run shares: torch, Lightning, jsonargparse

    _become(_serve(sys.argv[1]))
