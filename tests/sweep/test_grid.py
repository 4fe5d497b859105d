"""The grid: ``--sweep.grid`` and a config's ``sweep:`` section, the trials' order, one line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_app.errors import ConfigError
from lightning_app.sweep.grid import (
    GridKey,
    assignments,
    override_args,
    refuse_options,
    setting_label,
    short_hash,
    split_sweep_args,
    sweep_options,
    take_sweep_sections,
)


def _options(*argv: str, section: dict | None = None):
    cli, rest = split_sweep_args(argv)
    return sweep_options(cli, section), rest


def test_repeated_grid_options_accumulate_and_the_first_key_varies_slowest():
    options, rest = _options(
        "--config", "c.yaml", "--sweep.grid", "model.pe_type=rope,alibi", "--sweep.grid=data.batch_size=8,16"
    )
    assert rest == ["--config", "c.yaml"]  # the fit options, in their order
    assert options.grid == [GridKey("model.pe_type", ("rope", "alibi")), GridKey("data.batch_size", ("8", "16"))]
    trials = assignments(options.grid)
    assert [setting_label(t) for t in trials] == [
        "model.pe_type=rope, data.batch_size=8",
        "model.pe_type=rope, data.batch_size=16",
        "model.pe_type=alibi, data.batch_size=8",
        "model.pe_type=alibi, data.batch_size=16",
    ]
    assert override_args(trials[1]) == ["--model.pe_type=rope", "--data.batch_size=16"]
    assert (options.parallel, options.name, options.report) == ("auto", None, False)


def test_the_yaml_grid_and_the_command_line_replacing_it():
    section = {"grid": {"model.pe_type": ["rope", "alibi"], "model.lr": [0.001, 0.003]}, "parallel": 2}
    options, _ = _options(section=section)
    assert options.grid == [GridKey("model.pe_type", ("rope", "alibi")), GridKey("model.lr", ("0.001", "0.003"))]
    assert options.parallel == 2
    options, _ = _options("--sweep.grid", "model.pe_type=none", "--sweep.parallel", "auto", section=section)
    assert options.grid == [GridKey("model.pe_type", ("none",))] and options.parallel == "auto"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep.grid", "model.pe_type"], "--sweep.grid: got 'model.pe_type'; expected KEY=V1,V2,..."),
        (["--sweep.grid", "model.lr="], "--sweep.grid model.lr: got ''; expected a non-empty list of values"),
        (["--sweep.grid", "model.lr=1,,2"], "--sweep.grid model.lr: got '1,,2'; expected values that are not empty"),
        (["--sweep.grid", "model.lr=1,1"], "--sweep.grid model.lr: got '1,1'; expected each value once"),
        (["--sweep.grid", "model.lr=1", "--sweep.grid", "model.lr=2"], "--sweep.grid: got 'model.lr'; expected each"),
        (["--sweep.grid", "sync.dataset=a/bcdefg"], "--sweep.grid: got 'sync.dataset'; expected a fit option the"),
        (["--sweep.grid", "checkpoint.dirpath=a,b"], "--sweep.grid: got 'checkpoint.dirpath'; expected a fit option"),
        (["--sweep.grid", "model pe=1"], "--sweep.grid: got 'model pe'; expected a fit option's name"),
        ([], "--sweep.grid: got None; expected at least one KEY=V1,V2,..."),
        (["--sweep.grid", "model.lr=1", "--sweep.parallel", "0"], "--sweep.parallel: got '0'; expected auto, or"),
        (["--sweep.grid", "model.lr=1", "--sweep.name", "Big Name"], "--sweep.name: got 'Big Name'; expected 6 to"),
        (["--sweep.grid", "model.lr=1", "--sweep.report", "maybe"], "--sweep.report: got 'maybe'; expected true or"),
        (["--sweep.grids", "model.lr=1"], "option: got '--sweep.grids'; expected one of: --sweep.grid"),
        (["--sweep.grid"], "--sweep.grid: got None; expected a value after it"),
    ],
)
def test_each_mistake_is_one_line(argv, message):
    with pytest.raises(ConfigError) as error:
        _options(*argv)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_mistakes_are_one_line_too():
    with pytest.raises(ConfigError, match="non-empty list"):
        _options(section={"grid": {"model.pe_type": []}})
    with pytest.raises(ConfigError, match="a mapping of fit options to lists of values"):
        _options(section={"grid": ["model.pe_type"]})
    with pytest.raises(ConfigError, match="sweep: got 'paralel'; expected one of: grid, parallel, name, report"):
        _options(section={"grid": {"model.lr": [1]}, "paralel": 2})


def test_options_a_sweep_sets_itself_are_refused():
    refuse_options(["--checkpoint.dirpath", "runs", "--sync.directory=d", "--resume"])  # bases, and a no-op
    for argv in (["--sync.dataset", "me/mine-123"], ["--name=x"], ["--ckpt_path", "a.ckpt"]):
        with pytest.raises(ConfigError, match="a sweep sets it for each trial"):
            refuse_options(argv)


def test_a_config_sweep_section_is_taken_out_of_a_copy_fit_can_read(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": {"lr": 0.01}, "sweep": {"grid": {"model.pe_type": ["rope"]}}}))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}}))
    args, section = take_sweep_sections(["--config", str(plain), f"--config={config}"], tmp_path / "copies")
    assert section == {"grid": {"model.pe_type": ["rope"]}}
    assert args[:2] == ["--config", str(plain)]  # a config without a sweep section is used as it is
    copy = args[2].removeprefix("--config=")
    assert yaml.safe_load(Path(copy).read_text()) == {"model": {"lr": 0.01}}
    again, _ = take_sweep_sections(["--config", str(plain), f"--config={config}"], tmp_path / "copies")
    assert again == args  # the same config makes the same copy, every session


def test_hashes_are_stable_and_order_free():
    assert short_hash({"model.lr": 0.001, "b": 1}) == short_hash({"b": 1, "model.lr": 0.001})
    assert len(short_hash({"x": 1})) == 8 and short_hash({"x": 1}) != short_hash({"x": 2})
