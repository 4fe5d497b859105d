"""Running the trials: ordinary ``fit`` processes, children of the sweep, within the session's budget, on the devices
there are.

- **Children that end with the sweep.** Each trial stays in the sweep's process group (whatever ends the group ends
  it too) and asks the kernel for a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): a sweep killed on
  its own never leaves a trial training on beside the next one. A SIGTERM or SIGINT to the sweep is passed on to the
  running trials at once, so each saves and publishes (``fit``'s deadline counts a signal that reaches it twice
  together, from the group and from the sweep, as one); no further trial starts.
- **One budget.** Every trial gets ``LIGHTNING_APP_SESSION_START`` (`session_start_environment`), so their deadlines
  count from the session's start, as the sweep's own does; a trial starts only while the budget leaves time for it
  to start up, save a checkpoint and publish it.
- **Devices.** With ``--sweep.parallel N > 1`` each trial runs with ``--trainer.devices 1``: on GPUs each gets one
  (``CUDA_VISIBLE_DEVICES``); on CPU each gets ``cores // N`` threads (``OMP_NUM_THREADS``, unless it is set).
- **Output.** A trial writes into ``logs/sweep/<trial name>.log``; the sweep echoes its lines, each prefixed with
  the trial's setting.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_app.errors import bad_value
from lightning_app.gpu import nvidia_smi, will_use_gpu

if TYPE_CHECKING:  # the plan imports torch and Lightning; running processes needs neither
    from lightning_app.sweep.plan import Trial

log = logging.getLogger("lightning_app.sweep")

#: Until a trial of this session has started (its start line), what starting one is assumed to take: a fresh
#: interpreter importing torch and Lightning, and ``--resume`` reading the dataset.
ASSUMED_STARTUP_SECONDS = 5.0
#: How long a trial is given to save and publish after SIGTERM when the sweep itself fails (then SIGKILL).
STOP_WAIT_SECONDS = 600.0
#: How often the sweep looks at its trials (their exit, their new output).
POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


# -- the devices trials share --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """How the trials of one sweep share the machine.

    Attributes:
        parallel: how many trials run at once.
        gpus: the GPUs handed out one per trial (``CUDA_VISIBLE_DEVICES`` values); empty: the trials' own choice.
        threads: CPU threads per trial (``OMP_NUM_THREADS``); None: left as the environment has it.
    """

    parallel: int
    gpus: tuple[str, ...] = ()
    threads: int | None = None

    def describe(self) -> str:
        at_once = f"{self.parallel} trial{'s' if self.parallel > 1 else ''} at a time"
        if self.gpus:
            return f"{at_once}, one GPU each ({', '.join(self.gpus)})"
        if self.threads is not None:
            return f"{at_once}, {self.threads} CPU thread{'s' if self.threads > 1 else ''} each"
        return at_once

    def environment(self, slot: int) -> dict[str, str]:
        """What the trial in ``slot`` adds to its environment."""
        env = {}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def fit_args(self) -> list[str]:
        """What each trial adds to its ``fit`` options."""
        return ["--trainer.devices=1"] if self.parallel > 1 else []


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (asked of ``nvidia-smi``, never of
    torch: initialising CUDA here would break nothing in the trials, but costs seconds and GPU memory)."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [x.strip() for x in listed.split(",") if x.strip()]
        if not ids or ids[0] == "-1":
            return []
    lines = [row[0] for row in nvidia_smi("index") or []]
    return ids[: len(lines)] if listed is not None else lines


def _more_than_one(devices: object) -> bool:
    """Whether ``--trainer.devices`` asks for more than one device (``2``, ``-1``: all, ``[0, 1]``, ``"0,1"``)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if "," in text:
        return len([part for part in text.split(",") if part.strip()]) > 1
    try:
        return int(text) > 1 or int(text) == -1
    except ValueError:
        return False  # "auto": one device per trial is what --trainer.devices=1 then asks


def plan_devices(
    parallel: str | int, accelerator: object, devices: object, env: Mapping[str, str] | None = None
) -> Devices:
    """`Devices` for ``--sweep.parallel`` (``auto``: one trial per GPU with two or more GPUs, else one at a time);
    a ``--trainer.devices`` above 1 beside a ``parallel`` above 1 is refused (each trial gets one device)."""
    env = os.environ if env is None else env
    gpus = visible_gpus(env) if will_use_gpu(accelerator) else []
    count = (len(gpus) if len(gpus) >= 2 else 1) if parallel == "auto" else int(parallel)
    if count > 1 and _more_than_one(devices):
        raise bad_value(
            "--trainer.devices",
            devices,
            f"1 or left out with --sweep.parallel {parallel}: each trial gets one device",
        )
    if count > 1 and gpus:
        return Devices(count, tuple(gpus))
    if gpus:
        return Devices(count)
    threads = None if "OMP_NUM_THREADS" in env else max(1, len(os.sched_getaffinity(0)) // count)
    return Devices(count, threads=threads)


# -- one trial's process -------------------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when the process that started it dies (Linux);
    None where there is no ``prctl``. Resolved here, in the parent: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: nobody would end this child
            os._exit(1)

    return preexec


@dataclass
class TrialRun:
    """One trial's ``fit`` process in this session.

    Attributes:
        trial: the trial.
        process: its process.
        log_path: ``logs/sweep/<trial name>.log``.
        slot: which of the parallel places it runs in (its GPU).
        started: monotonic seconds at its start.
        startup: seconds until its start line (None until then).
        error_line: the last ``error: ...`` line it printed.
    """

    trial: Trial
    process: subprocess.Popen
    log_path: Path
    slot: int
    started: float
    startup: float | None = None
    error_line: str | None = None
    _offset: int = 0
    _partial: str = ""

    def echo(self, final: bool = False) -> None:
        """Log the lines the trial wrote since the last call, prefixed with its setting."""
        try:
            with open(self.log_path, "rb") as reader:
                reader.seek(self._offset)
                data = reader.read()
        except OSError:
            return
        self._offset += len(data)
        text = self._partial + data.decode(errors="replace")
        lines = text.split("\n")
        self._partial = "" if final else lines.pop()
        for line in lines:
            if not line.strip():
                continue
            if self.startup is None and line.startswith("Training "):
                self.startup = time.monotonic() - self.started
            if line.startswith("error: "):
                self.error_line = line.removeprefix("error: ")
            log.info(f"[{self.trial.label}] {line}")


@dataclass(frozen=True)
class Outcome:
    """How a trial's process ended in this session.

    Attributes:
        kind: ``ended`` (exit 0: finished, or stopped by its deadline), ``signal`` (stopped by a signal the sweep
            passed on), ``error`` (exit 2: a mistake in its input, ``line`` says which), ``crashed`` (anything
            else), ``skipped`` (not started: ``line`` says why).
        code: its exit status (negative: killed by that signal); None when it did not run.
        line: its error line, or why it was skipped.
    """

    kind: str
    code: int | None = None
    line: str = ""

    def describe(self) -> str:
        if self.kind == "error":
            return f"error: {self.line}"
        if self.kind == "crashed":
            return f"crashed (exit {self.code})"
        if self.kind == "signal":
            return "stopped by a signal"
        if self.kind == "skipped":
            return f"not started: {self.line}"
        return "stopped"


@dataclass
class Scheduler:
    """Runs trials as child processes (see the module's docstring).

    Args:
        devices: how trials share the machine.
        command: a trial's ``fit`` command line.
        env: the environment every trial gets (the session's start included).
        log_dir: where each trial's output goes (``logs/sweep``).
        remaining: seconds left in the session's budget (None: no limit).
        needed: seconds a trial needs to start, save and publish once, given the start-up time measured so far.
    """

    devices: Devices
    command: Callable[[Trial], list[str]]
    env: dict[str, str]
    log_dir: Path
    remaining: Callable[[], float | None]
    needed: Callable[[Trial, float], float]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stopping: str | None = None  # "signal", "budget" or "error": no further trial starts
    startup: float = ASSUMED_STARTUP_SECONDS
    _startups: list[float] = field(default_factory=list)
    _running: list[TrialRun] = field(default_factory=list)

    def run(self, pending: list[Trial]) -> dict[str, Outcome]:
        """Run ``pending`` in order, ``devices.parallel`` at a time, until all ran or no more may start; returns
        each trial's `Outcome` (by name)."""
        queue = list(pending)
        free = list(range(self.devices.parallel))
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while queue or self._running:
                while self.stopping is None and queue and free:
                    if not self._time_for(queue[0]):
                        break
                    self._start(queue.pop(0), free.pop(0))
                time.sleep(POLL_SECONDS)
                for run in list(self._running):
                    run.echo()
                    if run.process.poll() is not None:
                        run.echo(final=True)
                        self._running.remove(run)
                        free.append(run.slot)
                        self._ended(run)
                if self.stopping is not None and not self._running:
                    break
        except BaseException:
            self._stop_running()  # a failure of the sweep itself: its trials still save, never die with it
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        why = {"signal": "the sweep was stopped by a signal", "error": "a trial's input was refused"}
        for trial in queue:
            self.outcomes[trial.name] = Outcome("skipped", line=why.get(self.stopping or "", self._no_time(trial)))
        return self.outcomes

    def _time_for(self, trial: Trial) -> bool:
        remaining = self.remaining()
        if remaining is None or remaining > self.needed(trial, self.startup):
            return True
        if not self._running:
            self.stopping = "budget"  # nothing running will free time: stop here
        return False

    def _no_time(self, trial: Trial) -> str:
        remaining = self.remaining()
        left = f"{max(0.0, remaining):.0f} s left" if remaining is not None else "no budget"
        return f"no time left in this session ({left}; a trial needs about {self.needed(trial, self.startup):.0f} s)"

    def _start(self, trial: Trial, slot: int) -> None:
        argv = self.command(trial)
        env = {**self.env, **self.devices.environment(slot)}
        log_path = self.log_dir / f"{trial.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as output:
            when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            output.write(f"\n# {when}: {' '.join(argv)}\n".encode())
            output.flush()
            offset = output.tell()
            process = subprocess.Popen(
                argv, stdout=output, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent()
            )
        shown = {k: v for k, v in self.devices.environment(slot).items()}
        extra = f" ({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""
        log.info(f"Starting trial {trial.name} ({trial.label}){extra}; its output also goes to {log_path}")
        self._running.append(TrialRun(trial, process, log_path, slot, time.monotonic(), _offset=offset))
        if self.stopping == "signal":  # the signal came between the check and the start: this trial gets it too
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    def _ended(self, run: TrialRun) -> None:
        code = run.process.returncode
        if run.startup is not None:
            self._startups.append(run.startup)
            self.startup = max(self._startups)
        signalled = code in (-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)
        if code == 0:
            outcome = Outcome("ended", code)
        elif code == 2:
            outcome = Outcome("error", code, run.error_line or f"trial {run.trial.name} exited 2 ({run.log_path})")
            self.stopping = self.stopping or "error"
        elif signalled and self.stopping == "signal":
            outcome = Outcome("signal", code)
        else:
            outcome = Outcome("crashed", code, f"see {run.log_path}")
        self.outcomes[run.trial.name] = outcome
        log.info(f"Trial {run.trial.name} ({run.trial.label}) ended: {outcome.describe()}")

    def _stop_running(self) -> None:
        """SIGTERM every running trial and wait for it: each saves and publishes as on a signal (their own deadline
        bounds that), instead of being SIGKILLed by the parent-death signal when the sweep dies."""
        for run in self._running:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM)
        for run in self._running:
            try:
                run.process.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning(f"Trial {run.trial.name} did not stop in {STOP_WAIT_SECONDS:.0f} s after SIGTERM: killed")
                run.process.kill()

    def _on_signal(self, signum: int, _frame) -> None:
        first = self.stopping != "signal"
        self.stopping = "signal"
        for run in self._running:
            with contextlib.suppress(ProcessLookupError):
                run.process.send_signal(signal.SIGTERM)
        if first:
            name = signal.Signals(signum).name
            log.warning(f"{name} received: the running trials save and publish, then the sweep stops (exit 3)")
