"""One session of a sweep, from its command line to its exit status: plan, stores, states, trials, report.

`SweepRunner.prepare` does everything that can refuse the command (one line, exit 2) before anything trains: the
options, every trial checked with ``fit``'s parser, the devices, whose datasets the trials publish to. `run` reads
where each trial stands, prints the table, runs what is left, prints the table again, writes and publishes the
report when trials finished, and returns the exit status (see `lightning_app.commands.sweep`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from callbacks.deadline import assumed_publish_seconds
from lightning_app.durations import parse_duration
from lightning_app.errors import ConfigError
from lightning_app.persistence.restore import RestoreOptions
from lightning_app.persistence.retry import retry_call
from lightning_app.persistence.store import CheckpointStore, StoreError
from lightning_app.session import SessionBudget, process_start, session_start, session_start_environment
from lightning_app.sweep import report, table
from lightning_app.sweep.grid import refuse_options, split_sweep_args, sweep_options, take_sweep_sections
from lightning_app.sweep.plan import SweepPlan, Trial, make_plan
from lightning_app.sweep.scheduler import Devices, Outcome, Scheduler, plan_devices
from lightning_app.sweep.state import TrialState, attached_folders, read_states

log = logging.getLogger("lightning_app.sweep")

#: Exit statuses (`lightning_app.commands.sweep`).
ALL_FINISHED, CRASHED, BAD_INPUT, TRIALS_REMAIN = 0, 1, 2, 3


def exit_status(all_finished: bool, outcomes: Iterable[Outcome]) -> int:
    """2 when a trial's input was refused, else 1 when a trial crashed, else 0 when every trial is finished, else 3
    (trials remain; every trial that ran stopped cleanly)."""
    kinds = {outcome.kind for outcome in outcomes}
    if "error" in kinds:
        return BAD_INPUT
    if "crashed" in kinds:
        return CRASHED
    return ALL_FINISHED if all_finished else TRIALS_REMAIN


@dataclass
class Publishing:
    """Where the trials and the report publish.

    Attributes:
        directory: ``--sync.directory``: trial ``T`` publishes into ``<directory>/T``, the report into
            ``<directory>/<sweep>-report``.
        owner: the Kaggle user: trial ``T`` publishes to ``<owner>/T``, the report to ``<owner>/<sweep>-report``.
        why_none: why nothing is published (neither of the above).
    """

    directory: Path | None = None
    owner: str | None = None
    why_none: str = ""
    title: str | None = None
    call_timeout: float = 120.0

    def store(self, slug: str) -> CheckpointStore | None:
        """The store of the dataset ``slug`` (a trial's name, or ``<sweep>-report``)."""
        if self.directory is not None:
            from lightning_app.persistence.directory_store import DirectoryStore

            return DirectoryStore(self.directory / slug)
        if self.owner is not None:
            from lightning_app.persistence.kaggle.store import KaggleDatasetStore

            return KaggleDatasetStore(f"{self.owner}/{slug}", call_timeout=self.call_timeout)
        return None

    def fit_args(self, trial: Trial) -> list[str]:
        """What a trial's ``fit`` adds to publish where the sweep reads it."""
        if self.directory is not None:
            return [f"--sync.directory={self.directory / trial.name}"]
        if self.owner is None:
            return []
        args = [f"--sync.dataset={self.owner}/{trial.name}"]
        if self.title:  # dataset titles are unique per owner: each trial's gets its grid hash
            args.append(f"--sync.title={self.title[:41]} {trial.name[-8:]}")
        return args


def find_publishing(sync: dict) -> Publishing:
    """Where trials publish, from ``--sync.*``: a directory, the Kaggle user of the credentials (asked once, at
    login, for a token), or nowhere. A login that fails is one line (exit 2): every trial's ``--resume`` would."""
    if sync.get("directory"):
        return Publishing(directory=Path(sync["directory"]))
    if sync.get("enabled") is False:
        return Publishing(why_none="syncing is off (--sync.enabled false)")
    from lightning_app.persistence.kaggle.credentials import NO_CREDENTIALS_ADVICE, find_credentials
    from lightning_app.persistence.kaggle.store import login_username

    credentials = find_credentials()
    if credentials is None:
        return Publishing(why_none=f"no Kaggle credentials found ({NO_CREDENTIALS_ADVICE})")
    owner = credentials.username
    if owner is None:
        try:
            owner = retry_call(lambda: login_username(float(sync.get("call_timeout", 120.0))), attempts=3)
        except StoreError as error:
            raise ConfigError(
                f"sweep: could not learn whose Kaggle credentials {credentials.source} are ({error}); try again "
                "later, or publish into a folder with --sync.directory DIR, or train without --sync.enabled false"
            ) from None
        if not owner:
            raise ConfigError(f"sweep: the credentials from {credentials.source} name no user")
    return Publishing(owner=owner, title=sync.get("title"), call_timeout=float(sync.get("call_timeout", 120.0)))


@dataclass
class SweepRunner:
    """One session of a sweep (see the module's docstring)."""

    plan: SweepPlan
    devices: Devices
    publishing: Publishing
    logs: Path
    budget_env: dict[str, str] = field(default_factory=dict)
    stores: dict[str, CheckpointStore | None] = field(default_factory=dict)

    @classmethod
    def prepare(cls, argv: list[str], logs: Path) -> SweepRunner:
        """Everything that can refuse the command, before anything trains (one line each, exit 2)."""
        cli, rest = split_sweep_args(argv)
        refuse_options(rest)
        rest, section = take_sweep_sections(rest, logs / "config")
        options = sweep_options(cli, section)
        plan = make_plan(rest, options)
        devices = Devices(1) if options.report else plan_devices(options.parallel, plan.accelerator, plan.devices)
        budget = str(plan.deadline.get("budget", "auto"))
        start = session_start() if budget == "auto" else process_start()  # what the trials' deadlines count from
        runner = cls(plan, devices, find_publishing(plan.sync), logs, session_start_environment(start))
        runner.stores = {trial.name: runner.publishing.store(trial.name) for trial in plan.trials}
        return runner

    # -- the session -----------------------------------------------------------------------------------------

    @functools.cached_property
    def restore(self) -> RestoreOptions:
        """The trials' ``--restore.*``: where attached datasets are, how long a dataset is read for."""
        return RestoreOptions(**self.plan.restore)

    def read_states(self, trials: list[Trial]) -> dict[str, TrialState]:
        inputs = self.restore.inputs
        jobs = {t.name: (self.plan.folder(t), inputs, t.name, self.stores[t.name]) for t in trials}
        return read_states(jobs, self.restore.timeout_seconds)

    def rows(self, states: dict[str, TrialState], outcomes: dict[str, Outcome] | None = None) -> list[table.Row]:
        rows = []
        for trial in self.plan.trials:
            state, store = states[trial.name], self.stores[trial.name]
            dataset = store.name if store is not None else "-"
            if store is not None and state.published is not None:
                entry, version = state.published
                dataset += f" (v{version}, step {entry.global_step})"
            described = state.describe()
            outcome = (outcomes or {}).get(trial.name)
            if outcome is not None and not state.finished:
                described = outcome.describe() if outcome.kind != "ended" else f"stopped at step {state.step}"
            rows.append(table.Row(trial.name, trial.label, state.run_id, state.step, state.total, dataset, described))
        return rows

    def run(self) -> int:
        plan = self.plan
        where = self.publishing.why_none or (
            f"datasets in {self.publishing.directory}" if self.publishing.directory else f"{self.publishing.owner}'s"
        )
        states = self.read_states(plan.trials)
        finished_before = {name for name, s in states.items() if s.finished}
        log.info(
            f"Sweep {plan.name}: {len(plan.trials)} trials, {len(finished_before)} finished; "
            f"{self.devices.describe()}; publishing: {where}"
        )
        log.info(table.markdown(self.rows(states)))
        if plan.options.report:
            return self._report(states, always=True)
        pending = [t for t in plan.trials if t.name not in finished_before]
        # A trial whose dataset could not be read, with nothing here to go on from, waits for a later session: its
        # `fit --resume` would refuse to start (exit 2), and a fresh start would publish over its run.
        blocked = {t.name: states[t.name] for t in pending if states[t.name].unreadable and not states[t.name].sources}
        outcomes: dict[str, Outcome] = {
            name: Outcome(
                "skipped", line=f"its dataset could not be read ({state.unreadable}); run the sweep again later"
            )
            for name, state in blocked.items()
        }
        pending = [t for t in pending if t.name not in blocked]
        if pending:
            outcomes.update(self._schedule(pending))
            ran = [t for t in plan.trials if t.name in outcomes and outcomes[t.name].kind != "skipped"]
            states.update(self.read_states(ran))
        log.info(f"Sweep {plan.name} at the end of this session:")
        log.info(table.markdown(self.rows(states, outcomes)))
        newly = {name for name, s in states.items() if s.finished} - finished_before
        stopped_by_signal = any(o.kind == "signal" for o in outcomes.values())
        if (newly or not pending) and not stopped_by_signal:
            self._report(states, always=bool(newly))
        for name, outcome in outcomes.items():
            if outcome.kind == "error":
                print(f"error: trial {name}: {outcome.line}", file=sys.stderr)
        return exit_status(all(s.finished for s in states.values()), outcomes.values())

    def _schedule(self, pending: list[Trial]) -> dict[str, Outcome]:
        deadline = self.plan.deadline
        reserve = parse_duration("--deadline.reserve", deadline.get("reserve", "60s")).total_seconds()
        safety = float(deadline.get("safety", 2.0))
        env = {**os.environ, **self.budget_env, "PYTHONUNBUFFERED": "1"}
        budget = SessionBudget(str(deadline.get("budget", "auto")), env=env)

        def needed(trial: Trial, startup: float) -> float:
            # What `fit`'s deadline needs to stop cleanly before anything is measured, plus starting the trial.
            return reserve + safety * assumed_publish_seconds(trial.state_bytes) + startup

        scheduler = Scheduler(
            devices=self.devices,
            command=self._command,
            env=env,
            log_dir=self.logs,
            remaining=budget.remaining_seconds,
            needed=needed,
        )
        if (said := budget.describe()) is not None:
            log.info(f"{said}: shared by the trials")
        return scheduler.run(pending)

    def _attached(self, trial: Trial) -> Path:
        """Where the trial's own dataset is attached (a folder that does not exist when it is not): its `--resume`
        looks there only, so that another trial's checkpoint of the same architecture (a grid over `model.lr`) is
        never taken for its own."""
        inputs = self.restore.inputs
        return next(iter(attached_folders(inputs, trial.name)), inputs / trial.name)

    def _command(self, trial: Trial) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lightning_app",
            "fit",
            # Before the common options, so that a config or option of the user's still turns it on: a bar's
            # carriage returns make no lines to echo, and several trials' bars at once none to read.
            "--trainer.enable_progress_bar=false",
            *self.plan.common,
            *trial.args,
            f"--name={trial.name}",
            f"--checkpoint.dirpath={self.plan.folder(trial)}",
            f"--restore.input_dir={self._attached(trial)}",
            *self.publishing.fit_args(trial),
            *self.devices.fit_args(),
            "--resume",
        ]

    def _report(self, states: dict[str, TrialState], always: bool) -> int:
        """Write ``./sweep-report/`` and publish it (``always``: even when the published report already holds every
        finished trial). Returns 0, or 1 when it could not be published."""
        import torch

        plan = self.plan
        folder = report.REPORT_DIR
        store = self.publishing.store(f"{plan.name}-report")
        previous = report.previous_scores(folder, store)
        finished = {name for name, s in states.items() if s.finished}
        if not always and finished <= set(previous):
            return 0
        scratch = plan.checkpoints / ".sweep-report"
        try:
            materials = report.gather(plan, states, self.stores, scratch)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            held = report.write(plan, materials, table.markdown(self.rows(states)), folder, previous, device)
        finally:
            report.discard_scratch(scratch)
        log.info(
            f"Wrote {folder}/: {held['finished']} of {len(plan.trials)} trials finished, {held['curves']} curves, "
            f"{held['scored']} scored at 1, 2, 4 and 8 times their training length"
        )
        if store is None:
            log.info(f"The report stays local: {self.publishing.why_none}")
            return 0
        try:
            version = report.publish(folder, store, f"{held['finished']} of {len(plan.trials)} trials finished")
        except StoreError as error:
            log.warning(f"The report could not be published to {store.description} ({error}); it is in {folder}/")
            return 1
        log.info(f"Published the report as version {version} of {store.name}")
        return 0
