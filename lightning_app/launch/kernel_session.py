"""One session of a launched chain, inside the Kaggle kernel: ``python -m lightning_app.launch.kernel_session CODE
PLAN`` (the generated script runs it once the project is installed; CODE is the code dataset's folder, PLAN the
`Plan` as JSON).

In order:

1. Credentials: the kernel's Secrets (``KAGGLE_API_TOKEN``, or ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``), used by
   every process of the session rather than the notebook's own session token (which may not push a kernel).
   Without them nothing could be published: say the missing step and stop before training.
2. Which version of the kernel this is (its source holds the plan's token), and, when a session pushed it, wait
   (bounded) until Kaggle says that session has ended: two sessions of a chain never train at once.
3. Read the chain's status; write down the versions that ran without a record (killed by the platform).
4. Run the command with ``--resume`` in ``/kaggle/working`` (a batch session's output), with
   ``LIGHTNING_APP_SESSION_START`` set to the session's start; its budget is ``fit``'s own (12 h from that start,
   the weekly GPU quota), less ``--keep_quota`` when asked.
5. Read what is published (the run's manifest), remove the local checkpoints once they are all published (the
   output keeps only small files: this log, the status, the metric logs), and publish the session's record.
6. Decide (``decision.py``): finished, the next session pushed, or a pause; publish the decision.

Every call to Kaggle follows the one retry policy; a failure of the decision is recorded and never touches the
run's published checkpoints. The Kaggle folders come from ``lightning_app.session`` (``LIGHTNING_APP_KAGGLE_ROOT``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from lightning_app.launch.chain import ChainState, ChainStore, SessionRecord, StopRequest
from lightning_app.launch.decision import (
    DEFAULT_MINIMUM_SECONDS,
    FAILED,
    FINISHED,
    NONE,
    PUSHED,
    QUOTA,
    STOPPED,
    CommandOutcome,
    Decision,
    on_quota,
    span,
    utc,
    without_quota,
)
from lightning_app.launch.plan import Plan
from lightning_app.launch.pushing import push_session
from lightning_app.launch.retries import retried
from lightning_app.persistence.folder import MANIFEST_NAME, read_manifest
from lightning_app.persistence.kaggle.credentials import find_credentials, secrets_fallback
from lightning_app.persistence.kaggle.kernels import ACTIVE, ENDED, KaggleKernels, KernelState, PushRefused
from lightning_app.persistence.manifest import Manifest
from lightning_app.persistence.retry import next_poll
from lightning_app.persistence.store import StoreError
from lightning_app.session import (
    KAGGLE_MARGIN_SECONDS,
    KAGGLE_SESSION_SECONDS,
    Start,
    kaggle_working_dir,
    session_start,
    session_start_environment,
)

#: The session's own log and a copy of the chain's status, in ``/kaggle/working`` (the kernel's output).
LOG_NAME = "launch-session.log"
STATUS_NAME = "chain-status.json"
#: How long a session waits for the one that pushed it to end, and its polls (first, longest), in seconds.
WAIT_FOR_PREVIOUS_SECONDS = 15 * 60.0
FIRST_POLL_SECONDS, LONGEST_POLL_SECONDS = 1.0, 60.0
#: How long to wait for the run's last checkpoint to show in its dataset (a new version is processed first).
WAIT_FOR_PUBLISHED_SECONDS = 5 * 60.0
#: Versions looked at, back from this one, for sessions that ended without a record.
LOOK_BACK_VERSIONS = 10
#: What each command is given so that it continues where the chain left it. A sweep resumes its trials by itself
#: (the same options every session: finished trials skipped, the others resumed).
RESUME_FLAGS = {"fit": ("--resume",), "sweep": ()}
#: The folder ``fit`` keeps its checkpoints in (``--checkpoint.dirpath``'s default, under the working folder).
CHECKPOINT_FOLDER = "checkpoints"


def missing_credentials_step(kernel: str) -> str:
    """The one step to take when the kernel has no credentials."""
    return (
        f"attach the Secret KAGGLE_API_TOKEN (or the Secrets KAGGLE_USERNAME and KAGGLE_KEY) to the kernel: "
        f"https://www.kaggle.com/code/{kernel}/edit -> Add-ons -> Secrets; then run `launch` again"
    )


class KernelSession:
    """One session of the chain of ``plan.kernel`` (see the module's docstring).

    Args:
        plan: what to do.
        code: where the code dataset is mounted (the files the command names are there).
    """

    def __init__(self, plan: Plan, code: Path) -> None:
        self.plan = plan
        self.code = code
        self.working = kaggle_working_dir()
        self.working.mkdir(parents=True, exist_ok=True)
        self.start: Start = session_start()
        self.version: int | None = None
        self.chain: ChainState | None = None
        self.chain_readable = False
        self._stop: StopRequest | None = None  # the stop file, once read (with the run's manifest)
        self._stop_read = False
        self._log = open(self.working / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 - open for the session

    def say(self, text: str) -> None:
        line = f"launch: {text}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    # -- the session ------------------------------------------------------------------------------------------

    def run(self) -> int:
        """The session, start to end; the process's exit status (0: it did what the chain needed)."""
        plan = self.plan
        by = f"version {plan.pushed_by}" if plan.pushed_by is not None else "launch"
        self.say(
            f"a session of {plan.kernel}: `{plan.command}`, pushed by {by} at {utc(plan.pushed_at)}; the session "
            f"started at {utc(self.start.epoch)} ({self.start.source})"
        )
        credentials = self._use_secrets()
        if credentials is None or credentials.notebook_token:
            self.say(
                f"no Kaggle credentials in this kernel: nothing can be published, so nothing is run. To do: "
                f"{missing_credentials_step(plan.kernel)}"
            )
            self._write_local({"kernel": plan.kernel, "ended": "no Kaggle credentials in the kernel"})
            return 1
        self.say(f"Kaggle credentials: {credentials.source}")
        self.kernels = KaggleKernels(plan.kernel)
        self.store = ChainStore(plan.chain_dataset, plan.stop_dataset)
        try:
            if not self._find_version_and_wait():
                return 1
        except StoreError as error:
            self.say(f"could not ask Kaggle about {plan.kernel} ({error}): nothing is run")
            return 1
        record = self._open_record()
        self._publish(f"version {self.version}: started")
        outcome = self._run_command(record)
        self._close_record(record, outcome)
        self._publish(f"version {self.version}: {record.ended}")
        decision = self._decide(outcome, record)
        record.decided, record.decision = decision.decided, decision.text
        record.quota_refreshes_at = decision.refreshes_at
        self.say(f"decided: {decision.text}")
        self._publish(f"version {self.version}: {decision.text}")
        return 0 if decision.decided in (PUSHED, FINISHED, QUOTA, STOPPED) else 1

    @staticmethod
    def _use_secrets():
        """The kernel's Secrets, exported for every process this session starts, rather than the notebook's own
        session token (which the client prefers, and which may not push a kernel): a chain needs the user's."""
        fallback = secrets_fallback()  # None: no Secrets, or the client uses them already
        for name, value in fallback.env.items() if fallback is not None else ():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return find_credentials()  # in a notebook without other credentials: the Secrets, exported

    def _find_version_and_wait(self) -> bool:
        """Learn this session's version; wait for the session that pushed it to end. False: do not go on."""
        previous = self.plan.pushed_by
        asked = (previous,) if previous is not None else ()
        state = retried(lambda: self.kernels.state(versions=asked, token=self.plan.token), "kernel state", self.say)
        self.version = state.token_version
        if self.version is None:
            self.version = state.current_version
            self.say(f"no recent version holds this session's token: taking the newest, {self.version}")
        self.say(f"this is version {self.version} of {self.plan.kernel}")
        if previous is None:
            return True
        status = state.versions.get(previous, ("MISSING", ""))[0]
        deadline = time.monotonic() + WAIT_FOR_PREVIOUS_SECONDS
        pause = FIRST_POLL_SECONDS
        while status in ACTIVE:
            if time.monotonic() + pause > deadline:
                self.say(
                    f"version {previous}, which started this one, is still {status} after "
                    f"{span(WAIT_FOR_PREVIOUS_SECONDS)}: nothing is run (two sessions must not train at once)"
                )
                return False
            if pause == FIRST_POLL_SECONDS:
                self.say(f"waiting for version {previous}, which started this one, to end ({status})")
            time.sleep(pause)  # polling the service: Kaggle tells no one when a session ends
            pause = next_poll(pause, LONGEST_POLL_SECONDS)
            state = retried(lambda: self.kernels.state(versions=(previous,)), "kernel state", self.say)
            status = state.versions.get(previous, ("MISSING", ""))[0]
        return True

    def _open_record(self) -> SessionRecord:
        """This session's record in the chain, with the versions that ran without one written down."""
        self.chain = self._read_chain()
        record = self.chain.record(self.version)
        record.pushed_by, record.pushed_at, record.start = self.plan.pushed_by, self.plan.pushed_at, self.start.epoch
        if self.chain_readable:  # else once it can be read (`_publish`): never written over what is there
            self._complete(self.chain)
        return record

    def _complete(self, chain: ChainState) -> None:
        """The chain's own fields from this plan, the pusher's decision, and the versions that left no record."""
        plan = self.plan
        chain.command = " ".join([plan.command, *map(_shown, plan.args)])
        chain.launch_command, chain.launched_at = plan.launch_command, plan.launched_at
        chain.checkpoints = plan.checkpoints
        if plan.pushed_by is not None:
            pusher = chain.record(plan.pushed_by)
            if pusher.decided != PUSHED:  # its decision was not published (killed after pushing?)
                pusher.decided, pusher.decision = PUSHED, f"pushed version {self.version}"
            pusher.next_version = self.version
        self._note_unrecorded(chain)

    def _read_chain(self) -> ChainState:
        try:
            chain = retried(self.store.read, "reading the chain's status", self.say).chain
            self.chain_readable = True
        except StoreError as error:
            self.say(f"could not read the chain's status ({error}); it is read again at the end")
            chain = None
        return chain or ChainState(self.plan.kernel)

    def _note_unrecorded(self, chain: ChainState) -> None:
        """Versions before this one that ran and never recorded their end (a kill, missing credentials): what
        Kaggle's status says of them goes into their record."""
        ended = {r.version for r in chain.sessions if r.ended}
        known = {r.version for r in chain.sessions} | self._pushed_versions(chain)
        newest = max((r.version for r in chain.sessions if r.version < self.version), default=0)
        first = max(1, self.version - LOOK_BACK_VERSIONS)
        asked = tuple(v for v in range(first, self.version) if v not in ended and (v in known or v > newest))
        if not asked:
            return
        try:
            state = retried(lambda: self.kernels.state(versions=asked), "kernel state", self.say)
        except StoreError as error:
            self.say(f"could not ask Kaggle about earlier versions ({error})")
            return
        for number, (status, message) in sorted(state.versions.items()):
            if status in ENDED:
                record = chain.record(number)
                record.ended = unrecorded_ending(status, message, started=record.start is not None)
                record.decided, record.decision = NONE, "none: the session ended before deciding"
                self.say(f"version {number} {record.ended}")

    @staticmethod
    def _pushed_versions(chain: ChainState) -> set[int]:
        return {r.next_version for r in chain.sessions if r.next_version is not None}

    # -- the command ------------------------------------------------------------------------------------------

    def _run_command(self, record: SessionRecord) -> CommandOutcome:
        plan = self.plan
        step_before = self.chain.newest_step() if self.chain is not None else None
        budget = self._budget_arguments()
        argv = command_argv(plan, self.code, budget)
        env = {**os.environ, **session_start_environment(self.start)}
        self.say("running: " + " ".join(argv[2:]))
        record.command_start = time.time()
        tail: deque[str] = deque(maxlen=40)
        process = subprocess.Popen(  # in this process group: when the platform ends the session it ends it too
            argv,
            cwd=self.working,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            self._log.write(line)
            tail.append(line.rstrip("\n"))
        exit_code = process.wait()
        self._log.flush()
        self._tail = list(tail)
        finished, step_after = exit_code == 0, None
        if plan.command == "fit":
            published = self._published_state()
            finished = published.finished
            step_after = published.step
            record.step, record.total_steps, record.dataset_version = published.step, published.total, published.version
        return CommandOutcome(plan.command, exit_code, finished, step_before, step_after)

    def _budget_arguments(self) -> list[str]:
        """``--deadline.budget`` when ``--keep_quota`` keeps GPU quota back (otherwise ``fit``'s own ``auto``)."""
        plan = self.plan
        if not (plan.uses_gpu and plan.keep_quota_hours > 0):
            return []
        try:
            state = retried(lambda: self.kernels.state(quota=True), "reading the GPU quota", self.say)
            quota, why = state.quota, state.quota_unavailable
        except StoreError as error:
            quota, why = None, str(error)
        if quota is None:  # fit's own budget applies: 12 h from the session's start, and the quota left
            self.say(f"GPU quota not read ({why}): --keep_quota not applied in this session")
            return []
        elapsed = time.time() - self.start.epoch
        usable = quota.left_seconds - plan.keep_quota_hours * 3600
        seconds = min(KAGGLE_SESSION_SECONDS, elapsed + usable) - KAGGLE_MARGIN_SECONDS
        self.say(f"budget: {span(max(0.0, seconds))} from the session's start (GPU quota less --keep_quota)")
        return ["--deadline.budget", f"{max(1, int(seconds))}s"]

    def _published_state(self) -> _Published:
        """The run's newest published checkpoint, once it shows (a new version is processed first, bounded); the
        stop file is read with it."""
        folder = self.working / CHECKPOINT_FOLDER
        local = read_manifest(folder) if folder.is_dir() else None
        expected = max((e.global_step for e in local.entries.values()), default=None) if local else None
        deadline = time.monotonic() + WAIT_FOR_PUBLISHED_SECONDS
        pause = FIRST_POLL_SECONDS
        while True:
            try:
                published = self._read_published()
            except StoreError as error:
                self.say(f"could not read {self.plan.checkpoints} ({error})")
                return _Published(None, None, None, False)
            if expected is None or (published.step or -1) >= expected or time.monotonic() + pause > deadline:
                return published
            self.say(f"step {expected} is not in {self.plan.checkpoints} yet (newest: step {published.step})")
            time.sleep(pause)  # Kaggle processes a new version before it can be read
            pause = next_poll(pause, LONGEST_POLL_SECONDS)

    def _read_published(self) -> _Published:
        checkpoints = self.plan.checkpoints
        read = retried(lambda: self.store.read(also={checkpoints: MANIFEST_NAME}), f"reading {checkpoints}", self.say)
        self._stop, self._stop_read = read.stop, True
        contents = read.others.get(checkpoints)
        text = contents.texts.get(MANIFEST_NAME) if contents is not None else None
        entries = Manifest.from_json(text).newest_first() if text else []
        if not entries:
            return _Published(None, None, contents.number if contents is not None else None, False)
        newest = entries[0]
        return _Published(
            newest.global_step, newest.total_steps or None, contents.number, any(e.is_final for e in entries)
        )

    def _close_record(self, record: SessionRecord, outcome: CommandOutcome) -> None:
        record.exit_code = outcome.exit_code
        record.ended = self._how_it_ended(outcome)
        self._minimum_seconds = self._measured_minimum()
        if self.plan.command == "fit":
            self._clean_working(record)
        record.end = time.time()
        self.say(f"the command ended: {record.ended}")

    def _how_it_ended(self, outcome: CommandOutcome) -> str:
        if outcome.exit_code == 2:
            errors = [line for line in self._tail if line.startswith("error:")]
            last = (errors or [line for line in self._tail if line.strip()] or [""])[-1]
            return f"refused its input (exit 2): {last.removeprefix('error: ')}"[:500]
        if outcome.exit_code < 0:
            return f"killed by signal {-outcome.exit_code}"
        if outcome.finished:
            return "finished"
        if outcome.exit_code == 0 or (outcome.command == "sweep" and outcome.exit_code == 3):
            return "stopped, work remains"
        return f"failed (exit {outcome.exit_code})"

    def _measured_minimum(self) -> float:
        """Start-up plus one checkpoint interval, as this session went: from its start to its first checkpoint."""
        first = None
        for manifest_path in (self.working / CHECKPOINT_FOLDER).rglob(MANIFEST_NAME):
            try:
                manifest = Manifest.from_json(manifest_path.read_text())
            except (OSError, ValueError):
                continue
            for entry in manifest.entries.values():
                written = entry.written
                if written >= self.start.epoch - 1 and (first is None or written < first):
                    first = written
        return DEFAULT_MINIMUM_SECONDS if first is None else max(1.0, first - self.start.epoch)

    def _clean_working(self, record: SessionRecord) -> None:
        """Remove the local checkpoints once the newest is published: the output keeps only small files."""
        folder = self.working / CHECKPOINT_FOLDER
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            return
        local = max((e.global_step for e in manifest.entries.values()), default=None)
        if local is not None and record.step is not None and record.step >= local:
            shutil.rmtree(folder, ignore_errors=True)
            self.say(f"removed {folder} (step {local} is published)")
        else:
            record.notes.append(f"checkpoints up to step {local} kept in the kernel's output: not all published")

    # -- the decision -----------------------------------------------------------------------------------------

    def _decide(self, outcome: CommandOutcome, record: SessionRecord) -> Decision:
        plan = self.plan
        try:
            if not outcome.finished and outcome.exit_code in (0, 3) and not self._stop_read:
                self._stop = retried(self.store.read, "reading the stop file", self.say).stop
            decision = without_quota(outcome, self._stop, plan.launched_at)
            if decision is not None:
                return decision
            state = retried(lambda: self.kernels.state(quota=plan.uses_gpu), "kernel state", self.say)
            if plan.uses_gpu:
                decision = self._quota_decision(state)
            return decision or self._push_next(record, state)
        except StoreError as error:
            return Decision(FAILED, f"nothing pushed: the decision failed ({error})")

    def _quota_decision(self, state: KernelState) -> Decision | None:
        quota = state.quota
        if quota is None:  # the client cannot tell: Kaggle itself refuses a session over the quota
            self.say(f"GPU quota not read ({state.quota_unavailable}); pushing, Kaggle refuses a session over it")
            return None
        minimum = self._minimum_seconds
        return on_quota(quota.left_seconds, self.plan.keep_quota_hours * 3600, minimum, quota.refreshes_at)

    def _push_next(self, record: SessionRecord, state: KernelState) -> Decision:
        plan = self.plan
        newer = tuple(range(self.version + 1, (state.current_version or 0) + 1))
        if newer:
            state = retried(lambda: self.kernels.state(versions=newer), "kernel state", self.say)
            active = [(n, s) for n, (s, _m) in sorted(state.versions.items()) if s in ACTIVE]
            if active:
                number, status = active[-1]
                return Decision(NONE, f"nothing pushed: version {number} is already {status.lower()}")
        sources = [plan.code_dataset] + ([plan.checkpoints] if record.dataset_version is not None else [])
        folder = Path(tempfile.mkdtemp(prefix="next-session-"))
        try:
            pushed = push_session(plan.next(self.version), self.kernels, folder, sources, say=self.say)
        except PushRefused as refused:
            if refused.reason == "quota":
                refresh = state.quota.refreshes_at if state.quota is not None else None
                until = f"until {refresh:%Y-%m-%d %H:%M} UTC" if refresh else "until the quota refreshes"
                return Decision(QUOTA, f"paused {until}: {refused.text}", refresh.isoformat() if refresh else None)
            return Decision(FAILED, f"nothing pushed: {refused}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        record.next_version = pushed.version
        return Decision(PUSHED, f"pushed version {pushed.version}")

    # -- the status ---------------------------------------------------------------------------------------------

    def _publish(self, notes: str) -> None:
        """Publish the chain's status (and keep a copy in the output); a failure is said, never raised."""
        chain = self.chain
        self._write_local(json.loads(chain.to_json()))
        if not self.chain_readable:
            try:
                newest = retried(self.store.read, "reading the chain's status", self.say).chain
                self.chain_readable = True
            except StoreError as error:
                self.say(f"the chain's status is not published (it could not be read: {error}); see {STATUS_NAME}")
                return
            own = chain.record(self.version)
            chain = newest or ChainState(self.plan.kernel)  # what is there, and this session's record in it
            chain.sessions = sorted([r for r in chain.sessions if r.version != own.version] + [own], key=_version)
            self._complete(chain)
            self.chain = chain
        try:
            number = retried(lambda: self.store.write(chain, notes), "publishing the chain's status", self.say)
            self.say(f"the chain's status is {self.plan.chain_dataset} version {number}")
        except StoreError as error:
            self.say(f"the chain's status could not be published ({error}); see {STATUS_NAME}")

    def _write_local(self, data: dict) -> None:
        (self.working / STATUS_NAME).write_text(json.dumps(data, indent=1) + "\n")


class _Published:
    """The run's newest published checkpoint: its step, the run's last step, the dataset version, finished."""

    def __init__(self, step: int | None, total: int | None, version: int | None, finished: bool) -> None:
        self.step, self.total, self.version, self.finished = step, total, version, finished


def command_argv(plan: Plan, code: Path, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The session's command: ``python -m lightning_app fit|sweep ARGS [extra] [--resume]``, each file taken along
    named where the code dataset is mounted."""
    argv = [sys.executable, "-m", "lightning_app", plan.command, *plan.command_line(code), *extra]
    return argv + list(RESUME_FLAGS.get(plan.command, ()))


def unrecorded_ending(status: str, message: str, started: bool) -> str:
    """How a session that never recorded its end ended, as Kaggle's status tells it (``started``: it recorded its
    start, so it had credentials: the platform ended it)."""
    told = f"{status}: {message}" if message else status
    return f"ended before recording its end (Kaggle: {told})" if started else f"ended without a record (Kaggle: {told})"


def _version(record: SessionRecord) -> int:
    return record.version


def _shown(arg: object) -> str:
    return arg["code"] if isinstance(arg, dict) else str(arg)


def main(argv: list[str] | None = None) -> int:
    code, plan_text = (sys.argv[1:] if argv is None else argv)[:2]
    return KernelSession(Plan.from_json(plan_text), Path(code)).run()


if __name__ == "__main__":
    sys.exit(main())
