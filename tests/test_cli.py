"""The command line as a user meets it: configs, --help, the seed's aliases, one-line errors, learning."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from lightning_app.commands import main
from lightning_app.commands.fit import expand_aliases
from tests.cli_helpers import REPO, SMOKE, cli_env, fit_args, run

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys, tmp_path):
    from lightning_app.sweep.grid import sweep_options, take_sweep_sections

    # A sweep's config (configs/sweep.yaml): fit parses it without its sweep: section, as each trial gets it.
    args, section = take_sweep_sections(["--config", str(config)], tmp_path)
    if section is not None:
        assert sweep_options({}, section).grid
    printed = _print_config(capsys, *args)
    assert printed["model"]["pe_type"] in ("sinusoidal", "learned", "rope", "alibi", "none")
    assert printed["trainer"]["use_distributed_sampler"] is False
    assert printed["checkpoint"]["dirpath"]


def test_expected_configs_exist():
    assert {"smoke.yaml", "default.yaml", "text.yaml", "kaggle_t4x2.yaml"} <= {p.name for p in CONFIGS}
    t4 = yaml.safe_load((REPO / "configs" / "kaggle_t4x2.yaml").read_text())
    assert (t4["trainer"]["devices"], t4["trainer"]["strategy"], t4["trainer"]["precision"]) == (2, "ddp", "16-mixed")


def test_fit_without_config_uses_default_yaml(capsys):
    printed = _print_config(capsys)
    default = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert printed["model"]["d_model"] == default["model"]["d_model"]
    assert printed["data"]["class_path"] == default["data"]["class_path"]


def test_overrides_and_seed_aliases(capsys):
    printed = _print_config(
        capsys, "--config", str(SMOKE), "--pe_type", "rope", "--epochs=7", "--batch_size", "8", "--model_size", "small"
    )
    assert printed["model"]["pe_type"] == "rope"
    assert printed["model"]["model_size"] == "small"
    assert printed["trainer"]["max_epochs"] == 7
    assert printed["data"]["init_args"]["batch_size"] == 8
    assert expand_aliases(["--epochs", "3", "--pe_type=alibi"]) == [
        "--trainer.max_epochs",
        "3",
        "--model.pe_type=alibi",
    ]


def test_help_documents_every_group(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--model.pe_type",
        "--model.model_size",
        "--checkpoint.keep_last",
        "--checkpoint.every_n_train_steps",
        "--sync.dataset",
        "--sync.upload_last",
        "--sync.upload_best",
        "--restore.input_dir",
        "--resume",
        "--trainer.max_epochs",
    ):
        assert option in text, option
    assert "positional encoding" in text  # attribute docstrings became help text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.pe_type", "foo"], "--model.pe_type: got 'foo'; expected one of: sinusoidal, learned, rope, alibi"),
        (["--model.model_size", "huge"], "--model.model_size: got 'huge'; expected one of: tiny, small, base, large"),
        (["--data.batch_size", "0"], "--data.batch_size: got 0; expected an integer >= 1"),
        (
            ["--model.pe_type", "learned", "--data.seq_len", "300"],
            "--data.seq_len: got 300; expected an integer <= 256",
        ),
        (["--data", "TextDataModule", "--data.path", "/no/such/corpus"], "--data.path: got '/no/such/corpus'"),
        (["--checkpoint.keep_last", "0"], "--checkpoint.keep_last: got 0"),
        (["--checkpoint.train_time_interval", "soon"], "--checkpoint.train_time_interval: got 'soon'"),
    ],
    ids=["pe_type", "model_size", "batch_size", "learned_seq_len", "text_path", "keep_last", "interval"],
)
def test_bad_input_is_one_line_without_traceback(args, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(SMOKE), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: " + expected), err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "checkpoints").exists(), "failed before training"


def test_empty_text_file_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(SMOKE), "--data", "TextDataModule", "--data.path", str(tmp_path / "empty.txt")])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --data.path")


@pytest.mark.slow
def test_smoke_fit_learns_toward_the_synthetic_floor(tmp_path):
    # A fresh interpreter, as a user's cell starts it (the other CLI tests fork from a warm one).
    result = run(fit_args("--trainer.enable_progress_bar", "false"), tmp_path, cli_env(tmp_path / "home"), fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(SMOKE.read_text())["data"]["init_args"]
    floor, uniform = math.log(config["branching"]), math.log(config["vocab_size"])
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    entries = sorted(manifest["checkpoints"], key=lambda e: e["global_step"])
    assert [e["epoch"] for e in entries] == [0, 1, 2]
    first, last = entries[0]["metrics"]["val_loss"], entries[-1]["metrics"]["val_loss"]
    assert last < first, "validation loss did not fall"
    # From the uniform guess (log V) most of the way down to the best achievable loss (log branching).
    assert last - floor < 0.25 * (uniform - floor), (last, floor, uniform)


def test_without_resume_existing_checkpoints_are_mentioned_in_one_line(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "kaggle_epoch_4_20261126-031500.ckpt").write_bytes(b"an earlier run's")
    with caplog.at_level(logging.INFO, logger="lightning_app"):
        main(["fit", "--config", str(SMOKE), "--trainer.max_epochs", "0", "--trainer.logger", "false"])
    fresh = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Starting fresh")]
    assert len(fresh) == 1 and "--resume" in fresh[0]
    assert (tmp_path / "checkpoints" / "kaggle_epoch_4_20261126-031500.ckpt").read_bytes() == b"an earlier run's"


def test_help_lists_every_command_and_an_unknown_one_is_one_line(capsys):
    from lightning_app.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == ["fit", "validate", "test", "checkpoints", "plot", "lengths", "generate", "sweep", "launch"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: got command 'fitt'; expected one of: fit, validate, test, checkpoints, plot, lengths, generate, "
        "sweep, launch"
    ]
