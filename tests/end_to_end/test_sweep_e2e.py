"""``sweep`` as a user runs it: the same command every session until every trial is finished, each trial bit for bit
what it would have been alone; trials side by side; the report and the curves published with the checkpoints.

The smallest runs that show it: `configs/smoke.yaml` cut to 2 epochs of 8 steps (16 steps, about a second of
training), a checkpoint every 4 steps. Each trial is a fresh interpreter (as in production), so the time goes to
starting trials and to the fake Kaggle server, not to training.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_app.commands import plot
from tests.cli_helpers import (
    SMOKE,
    assert_same_training_state,
    cli_env,
    fit_args,
    load,
    newest_checkpoint,
    run,
    run_in_group,
)
from tests.fake_kaggle import FakeKaggle
from tests.support.kill_switch import kill_config

pytestmark = pytest.mark.slow

SMALL = (
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "8",
    "--checkpoint.every_n_train_steps",
    "4",
    "--checkpoint.keep_last",
    "2",
    "--trainer.enable_progress_bar",
    "false",
)
TOTAL_STEPS = 16
#: The settings a test compares with a run of its own, each trained alone and never interrupted.
ALONE = {
    "alibi": ("--model.pe_type", "alibi"),
    "rope": ("--model.pe_type", "rope"),
    "none": ("--model.pe_type", "none"),
    "0.001": ("--model.lr", "0.001"),
    "0.003": ("--model.lr", "0.003"),
}


class Alone:
    """Each setting trained alone by ``fit``, never interrupted, made when a test first asks for it."""

    def __init__(self, factory) -> None:
        self._factory, self._runs = factory, {}

    def __getitem__(self, setting: str) -> Path:
        if setting not in self._runs:
            work = self._factory.mktemp(f"alone-{setting}")
            result = run(fit_args(*SMALL, *ALONE[setting], "--sync.enabled", "false"), work, cli_env(work / "home"))
            assert result.returncode == 0, result.stderr[-3000:]
            self._runs[setting] = work
        return self._runs[setting]

    def final(self, setting: str) -> dict:
        return load(newest_checkpoint(self[setting] / "checkpoints"))

    def history(self, setting: str) -> str:
        (metrics,) = (self[setting] / "logs" / "lm").glob("*/metrics.csv")
        return metrics.read_text()


@pytest.fixture(scope="session")
def alone(tmp_path_factory) -> Alone:
    return Alone(tmp_path_factory)


def _sweep(work: Path, *extra: str) -> list[str]:
    attached = ("--restore.input_dir", str(work / "nothing-attached"))
    return [sys.executable, "-m", "lightning_app", "sweep", "--config", str(SMOKE), *SMALL, *attached, *extra]


def _by_column(history: str) -> dict[str, dict[int, list[str]]]:
    """column -> step -> every value logged for it (the CSV text: equal text is the same float)."""
    columns: dict[str, dict[int, list[str]]] = {}
    for row in csv.DictReader(io.StringIO(history)):
        for column, value in row.items():
            if value and column not in ("step", "epoch"):
                columns.setdefault(column, {}).setdefault(int(row["step"]), []).append(value)
    return columns


def _assert_one_whole_history(published: str, reference: str) -> None:
    """Every step logged once, the training rows those of the run never interrupted; its validations too (a stop
    by the deadline mid-epoch validates once more, at the step where it stopped)."""
    got, want = _by_column(published), _by_column(reference)
    for column, steps in got.items():
        assert all(len(values) == 1 for values in steps.values()), f"{column} logged twice at some step"
    for column in ("train_loss", "lr-AdamW/pg1"):
        assert got[column] == want[column], column
    assert sorted(got["train_loss"]) == list(range(TOTAL_STEPS))
    assert all(got["val_loss"].get(step) == values for step, values in want["val_loss"].items())


# -- three sessions, one of them SIGKILLed ---------------------------------------------------------------------------


def _trials(fake: FakeKaggle) -> dict[str, str]:
    """pe_type -> the trial's dataset (``fake-user/alibi-tiny-<8>-<8>``), the report's left out."""
    return {ref.split("/")[1].split("-")[0]: ref for ref in fake.datasets if not ref.endswith("-report")}


def _newest(fake: FakeKaggle, ref: str):
    version = fake.versions(ref)[-1]
    (entry,) = json.loads(version.files["manifest.json"])["checkpoints"]
    return version, entry


def _finished(fake: FakeKaggle) -> set[str]:
    return {ref for ref in _trials(fake).values() if _newest(fake, ref)[1]["global_step"] == TOTAL_STEPS}


def test_three_sessions_finish_every_trial_bit_for_bit_and_publish_the_comparison(tmp_path, fake_kaggle, alone):
    grid = ("--sweep.grid", "model.pe_type=alibi,rope,none")
    finished, versions, outputs = [], [], []

    def session(number: int, *extra: str, in_group: bool = False):
        work = tmp_path / f"session{number}"  # a fresh working directory: only the fake server carries state
        work.mkdir()
        env = cli_env(work / "home", fake_kaggle.env(work))
        result = (run_in_group if in_group else run)(_sweep(work, *grid, *extra), work, env, timeout=300)
        output = result.stdout + result.stderr
        outputs.append(output)
        before = finished[-1] if finished else set()
        for ref in before:  # no finished trial runs again: no output, no new version
            assert not (work / "logs" / "sweep" / f"{ref.split('/')[1]}.log").exists(), ref
            assert len(fake_kaggle.versions(ref)) == versions[-1][ref]
        finished.append(_finished(fake_kaggle))
        versions.append({ref: len(fake_kaggle.versions(ref)) for ref in _trials(fake_kaggle).values()})
        return result, output

    # Session 1: a budget of seconds shared by the trials, and steps made as slow as a bigger model's (0.75 s: 12 s
    # of training per trial), so the budget ends the session first: the first trial starts (about 13 s must be
    # left), its deadline may stop it, and no time is left for another.
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"trainer": {"callbacks": [_callback("SlowSteps", seconds=0.75)]}}))
    budget = ("--deadline.budget", "24s", "--deadline.reserve", "3s", "--deadline.safety", "1")
    first, output = session(1, "--config", str(slow), *budget)
    assert first.returncode == 3, output[-3000:]
    assert len(_trials(fake_kaggle)) == 1 and output.count("not started: no time left in this session") == 2
    # Session 2: the platform ends the session (the sweep's whole process group) in the middle of a trial.
    kill = kill_config(tmp_path, "KillSessionAfterPublished", 6)
    second, output = session(2, "--config", str(kill), in_group=True)
    assert second.returncode == -signal.SIGKILL, output[-3000:]
    # Session 3: the same command, no budget: every trial left is resumed or started, and finished.
    third, output = session(3)
    assert third.returncode == 0, output[-3000:]
    assert re.search(r"Resuming from kaggle_epoch_\S+ \(epoch \d+, step \d+\) downloaded from kaggle:", output)

    trials = _trials(fake_kaggle)
    assert set(trials) == {"alibi", "rope", "none"} and finished[-1] == set(trials.values())
    for pe, ref in trials.items():
        version, entry = _newest(fake_kaggle, ref)
        assert entry["total_steps"] == TOTAL_STEPS
        final = torch.load(io.BytesIO(version.files[entry["file"]]), map_location="cpu", weights_only=True)
        assert_same_training_state(final, alone.final(pe))
        _assert_one_whole_history(version.files["metrics.csv"].decode(), alone.history(pe))

    # The report: every trial, published as the sweep's own dataset; the same sweep name in every session.
    names = {re.search(r"Sweep (sweep-[0-9a-f]{8}):", out)[1] for out in outputs}
    assert len(names) == 1
    report = fake_kaggle.versions(f"fake-user/{names.pop()}-report")[-1].files
    readme, lengths = report["README.md"].decode(), report["lengths.md"].decode()
    assert all(ref.split("/")[1] in readme for ref in trials.values()) and "3 of 3 trials finished" in readme
    assert "| run | 32* | 64 | 128 | 256 |" in lengths  # each finished trial at 1, 2, 4 and 8 times its length
    rows = [line.split("|")[1].strip() for line in lengths.splitlines() if line.startswith("| ")]
    assert rows == ["run", "alibi", "rope", "none"], lengths
    assert set(json.loads(report["report.json"])["trials"]) == {ref.split("/")[1] for ref in trials.values()}
    assert ("curves.png" in report) == _has_matplotlib()


def _callback(name: str, **init_args) -> dict:
    return {"class_path": f"tests.support.kill_switch.{name}", "init_args": init_args}


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


# -- side by side, and a grid over a training knob -------------------------------------------------------------------


def test_two_trials_side_by_side_on_cpu_end_as_each_alone_with_their_own_datasets_folders_and_curves(tmp_path, alone):
    """``--sweep.parallel 2`` (one thread per trial, as the trials alone had: CPU kernels may round differently with
    another thread count) over ``model.lr``, a knob that leaves the experiment's name alone. Sequential sweeps equal
    each trial alone in the test above, so this is also the same as ``--sweep.parallel 1``."""
    store = tmp_path / "published"
    args = _sweep(
        tmp_path, "--sweep.grid", "model.lr=0.001,0.003", "--sweep.parallel", "2", "--sync.directory", str(store)
    )
    result = run(args, tmp_path, cli_env(tmp_path / "home"), timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    started = [m.start() for m in re.finditer(r"Starting trial ", output)]
    assert len(started) == 2 and started[1] < output.index(") ended: "), "the trials did not run side by side"

    trials = sorted(p for p in store.iterdir() if not p.name.endswith("-report"))
    assert len(trials) == 2  # two datasets...
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [p.name for p in trials]  # ...two folders
    newest = [max(t.glob("v*"), key=lambda v: int(v.name[1:])) for t in trials]
    by_lr = {}
    for version in newest:
        (entry,) = json.loads((version / "manifest.json").read_text())["checkpoints"]
        lr = entry["training"]["model.lr"]
        by_lr[str(lr)] = version
        assert entry["global_step"] == TOTAL_STEPS
        assert_same_training_state(load(version / entry["file"]), alone.final(str(lr)))
    assert set(by_lr) == {"0.001", "0.003"}
    # Every version's history holds the rows logged before its checkpoint's step, and no later one.
    for trial in trials:
        for version in trial.glob("v*"):
            (entry,) = json.loads((version / "manifest.json").read_text())["checkpoints"]
            steps = {int(r["step"]) for r in csv.DictReader(io.StringIO((version / "metrics.csv").read_text()))}
            assert steps == set(range(entry["global_step"]))
    curves = plot.load_curves(newest)  # ...and two curves, read from the published versions alone
    assert len(curves) == 2 and curves[0].key != curves[1].key
    readme = (tmp_path / "sweep-report" / "README.md").read_text()
    assert all(t.name in readme for t in trials) and "2 of 2 trials finished" in readme
    # --sweep.report true: the report again, nothing trained, published as the report's next version.
    (report,) = store.glob("*-report")
    again = run([*args, "--sweep.report", "true"], tmp_path, cli_env(tmp_path / "home"), timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "Starting trial" not in again.stdout + again.stderr
    assert sorted(v.name for v in report.glob("v*")) == ["v1", "v2"]
