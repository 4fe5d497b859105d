"""Before anything trains: every trial checked with fit's own parser (one line, exit 2), named, given its devices."""

from __future__ import annotations

import pytest

from lightning_app.commands import sweep
from lightning_app.errors import ConfigError
from lightning_app.sweep.grid import split_sweep_args, sweep_options
from lightning_app.sweep.plan import make_plan
from lightning_app.sweep.scheduler import Devices, plan_devices
from tests.cli_helpers import SMOKE

BAD_GRIDS = [
    (["--sweep.grid", "model.pe_tipe=rope,alibi"], "--sweep.grid: got 'model.pe_tipe'; expected a fit option"),
    (["--sweep.grid", "data.foo=1,2"], "--sweep.grid: got 'data.foo'; expected a fit option"),
    (
        ["--sweep.grid", "model.pe_type=rope,xpos"],
        "--sweep.grid model.pe_type: got 'xpos'; expected one of: sinusoidal, learned, rope, alibi, none",
    ),
    (["--sweep.grid", "data.batch_size=8,lots"], "--sweep.grid data.batch_size: got 'lots'; expected a value of type"),
    (["--sweep.grid", "model.lr=0.001,-1"], "--sweep.grid model.lr=-1: --model.lr: got -1.0; expected a number > 0"),
    (["--sweep.grid", "model.lr=0.001,1e-3"], "--sweep.grid: got 'model.lr=1e-3'; expected values that differ"),
    (["--sweep.grid", "model.lr="], "--sweep.grid model.lr: got ''; expected a non-empty list of values"),
    (["--sweep.grid", "model.lr=1", "--sweep.grid", "model.lr=2"], "--sweep.grid: got 'model.lr'; expected each key"),
    (["--sweep.grid", "model.lr=1", "--sync.dataset", "me/my-runs"], "--sync.dataset: a sweep sets it for each"),
    (
        ["--sweep.grid", "model.lr=1,2", "--sweep.parallel", "2", "--trainer.devices", "2"],
        "--trainer.devices: got '2'; expected 1 or left out with --sweep.parallel 2",
    ),
    (
        ["--model.pe_type", "learned", "--sweep.grid", "data.seq_len=32,4096"],
        "--sweep.grid data.seq_len=4096: --data.seq_len: got 4096; expected an integer <= 256",
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD_GRIDS, ids=[m[:40] for _, m in BAD_GRIDS])
def test_a_bad_grid_is_one_line_and_exit_2_before_anything_trains(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert sweep.main(["--config", str(SMOKE), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {message}"), captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "logs" / "sweep").exists() and not (tmp_path / "checkpoints").exists()


def _plan(*argv: str):
    cli, rest = split_sweep_args(["--config", str(SMOKE), *argv])
    return make_plan(rest, sweep_options(cli, None))


def test_each_trial_is_named_after_its_run_and_its_grid_values():
    by_lr = _plan("--sweep.grid", "model.lr=0.001,0.003")
    # A training knob: one experiment (same model and data), yet two trials, two names, two datasets.
    experiment = {t.name.rsplit("-", 1)[0] for t in by_lr.trials}
    assert len(experiment) == 1 and len({t.name for t in by_lr.trials}) == 2
    by_pe = _plan("--sweep.grid", "model.pe_type=alibi,rope")
    assert [t.name.split("-")[:2] for t in by_pe.trials] == [["alibi", "tiny"], ["rope", "tiny"]]
    assert all(len(t.name) <= 50 for t in by_lr.trials + by_pe.trials)
    # The same grid value names the same trial, in any sweep; the sweep's own name follows its settings.
    assert _plan("--sweep.grid", "model.pe_type=rope").trials[0].name == by_pe.trials[1].name
    assert by_pe.name == _plan("--sweep.grid", "model.pe_type=alibi,rope").name
    assert by_pe.name != _plan("--sweep.grid", "model.pe_type=alibi,rope", "--trainer.max_epochs", "9").name
    assert _plan("--sweep.grid", "model.lr=0.001", "--sweep.name", "my-sweep").name == "my-sweep"


def test_parallel_trials_get_one_device_each(monkeypatch):
    cpu = {"CUDA_VISIBLE_DEVICES": ""}
    assert plan_devices("auto", "cpu", 1, cpu) == Devices(1, threads=_cores())
    assert plan_devices(2, "cpu", "auto", cpu) == Devices(2, threads=max(1, _cores() // 2))
    assert plan_devices(2, "cpu", 1, {**cpu, "OMP_NUM_THREADS": "1"}) == Devices(2)  # the user's own choice
    assert Devices(2, threads=1).environment(1) == {"OMP_NUM_THREADS": "1"}
    assert Devices(2, threads=1).fit_args() == ["--trainer.devices=1"] and Devices(1).fit_args() == []
    gpus = Devices(2, ("0", "1"))
    assert [gpus.environment(slot) for slot in (0, 1)] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    monkeypatch.setattr("lightning_app.sweep.scheduler.visible_gpus", lambda env: ["0", "1"])
    assert plan_devices("auto", "gpu", 1, {}) == gpus  # T4 x2: one trial per GPU
    assert plan_devices("auto", "cpu", 1, {"OMP_NUM_THREADS": "4"}) == Devices(1)  # a CPU run ignores the GPUs
    with pytest.raises(ConfigError, match="--trainer.devices: got 2; expected 1 or left out"):
        plan_devices("auto", "gpu", 2, {})


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
