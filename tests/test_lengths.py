"""``python -m lightning_app lengths``: two tiny runs trained by the real CLI, scored at several lengths."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from lightning_app.commands import lengths, main
from tests.cli_helpers import cli_env, fit_args, newest_checkpoint, run

LENGTHS = ("16", "32", "64")  # smoke.yaml trains at 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """pe_type -> run folder; ``learned`` gets a 32-position table, so 64 is beyond it."""
    folders = {}
    for pe, extra in (("learned", ["--model.max_seq_len", "32"]), ("alibi", [])):
        folder = tmp_path_factory.mktemp(pe)
        args = fit_args("--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false", "--model.pe_type", pe)
        result = run(args + extra, folder, cli_env(folder / "home"))
        assert result.returncode == 0, result.stderr[-3000:]
        folders[pe] = folder
    return folders


def lengths_cli(*args: str, cwd: Path):
    return run([sys.executable, "-m", "lightning_app", "lengths", *args], cwd, cli_env(cwd / "home"))


def test_table_and_plot(runs, tmp_path):
    result = lengths_cli(str(runs["learned"]), str(runs["alibi"]), "--lengths", *LENGTHS, "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| run | 16 | 32* | 64 |"
    learned = next(line for line in lines if line.startswith("| learned (tiny)"))
    alibi = next(line for line in lines if line.startswith("| alibi (tiny)"))
    assert learned.endswith("| n/a [1] |")  # past its 32-position table
    assert any(line.startswith("[1] n/a: learned positions stop at 32") for line in lines)
    assert len(re.findall(r"\d+\.\d+ \(\d+\.\d+\)", alibi)) == 3
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pe, length", [("alibi", 64), ("learned", 16)])
def test_loss_matches_validate(runs, pe, length):
    """Same windows as ``validate --data.seq_len L``: its val_loss (a batch-size-weighted mean of batch means over
    equal-length windows) equals our mean over all tokens, up to float summation order."""
    folder = runs[pe]
    checkpoint = newest_checkpoint(folder / "checkpoints")
    config = next((folder / "logs" / "lm").glob("*/config.yaml"))
    args = ["validate", "--config", str(config), "--ckpt_path", str(checkpoint), "--data.seq_len", str(length)]
    result = run([sys.executable, "-m", "lightning_app", *args], folder, cli_env(folder / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    logged = float(re.search(r"val_loss\s*\S\s*([0-9.]+)", result.stdout).group(1))

    hparams = lengths.LanguageModel.from_checkpoint(checkpoint, torch.device("cpu"))[1]
    scored = lengths.Run(checkpoint, hparams, lengths.training_data(checkpoint, hparams))
    lengths.score(scored, [length], torch.device("cpu"))
    assert scored.scores[length][0] == pytest.approx(logged, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_run", "--lengths", "16"], "error: CKPT_OR_RUN_DIR: got 'no_such_run'"),
        (["RUN", "--lengths", "1"], "error: argument --lengths: got '1'; expected an integer >= 2"),
        (["RUN", "--lengths", "ten"], "error: argument --lengths: got 'ten'; expected an integer >= 2"),
        (["RUN", "--lengths", "16", "--data.seq_len", "8"], "error: --data.seq_len: got 8"),
    ],
)
def test_bad_input_is_one_line(runs, args, message, capsys):
    args = [str(runs["alibi"]) if a == "RUN" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["lengths", *args])  # in this process: the one line is the command's, not the interpreter's
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1
