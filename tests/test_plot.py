"""``python -m lightning_app plot``: several runs in one figure, resumed sessions stitched into one curve."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_app.commands import plot
from tests.cli_helpers import REPO

COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_ppl", "wall_time"]


def write_run(root: Path, experiment: str, rows: list[dict], settings: dict | None = None, config: bool = False):
    """A log folder as the CLI leaves it: ``root/lm/<experiment>/metrics.csv`` and ``hparams.yaml``."""
    folder = root / "lm" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    if not any("train_loss" in r for r in rows):
        rows = [train(0, 3.0), *rows]  # a training run logs train_loss (a validate run's log has none)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if settings is not None and config:
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": settings, "trainer": {"max_epochs": 3}}))
    elif settings is not None:
        (folder / "hparams.yaml").write_text(yaml.safe_dump({**settings, "lr": 0.003}))
    return folder / "metrics.csv"


def val(step: int, loss: float, seconds: float | None = None) -> dict:
    return {"step": step, "val_loss": loss, "val_ppl": round(2.718281828**loss, 4), "wall_time": seconds}


def train(step: int, loss: float) -> dict:
    return {"step": step, "train_loss": loss}


ROPE = {"pe_type": "rope", "model_size": "tiny", "vocab_size": 32}
ALIBI = {"pe_type": "alibi", "model_size": "tiny", "vocab_size": 32}


def test_sessions_in_different_folders_become_one_curve_later_rows_winning(tmp_path):
    # Session 1 validated at steps 31 and 63, then died after its step-50 checkpoint's work was partly redone...
    write_run(tmp_path / "s1", "rope-tiny-1a2b3c4d", [val(31, 2.0, 10), train(60, 9.9), val(63, 9.9, 20)], ROPE)
    # ...session 2 resumed from step 50 and logged steps 50.. again: its step-63 value is the one that counts.
    write_run(tmp_path / "s2", "rope-tiny-1a2b3c4d", [train(50, 1.8), val(63, 1.7, 18), val(95, 1.6, 30)], ROPE)
    (curve,) = plot.load_curves([tmp_path / "s2", tmp_path / "s1"])  # argument order does not matter
    assert curve.label == "rope (tiny)"
    assert curve.series("val_loss") == ([31, 63, 95], [2.0, 1.7, 1.6])
    assert curve.points["wall_time"] == {31: 10.0, 63: 18.0, 95: 30.0}
    assert curve.points["train_loss"] == {50: 1.8, 60: 9.9}


def test_rows_appended_to_one_file_by_a_resumed_session_win_too(tmp_path):
    path = write_run(tmp_path, "rope-tiny-1a2b3c4d", [val(31, 2.0), val(63, 9.9), val(63, 1.7)], ROPE)
    (curve,) = plot.load_curves([path])
    assert curve.series("val_loss") == ([31, 63], [2.0, 1.7])


def test_experiments_get_their_own_curves_and_labels(tmp_path):
    write_run(tmp_path, "rope-tiny-1a2b3c4d", [val(31, 2.0)], ROPE)
    write_run(tmp_path, "alibi-tiny-5e6f7a8b", [val(31, 2.1)], ALIBI)
    write_run(tmp_path, "rope-tiny-99999999", [val(31, 2.2)], {**ROPE, "vocab_size": 64})
    labels = sorted(c.label for c in plot.load_curves([tmp_path]))
    assert labels == ["alibi (tiny)", "rope (tiny) [1a2b3c4d]", "rope (tiny) [99999999]"]


def test_settings_from_config_yaml_and_folders_not_named_by_the_cli(tmp_path):
    nested = {"class_path": "lightning_app.module.LanguageModel", "init_args": ALIBI}
    write_run(tmp_path / "a", "version_0", [val(31, 2.0)], nested, config=True)
    write_run(tmp_path / "b", "version_3", [val(63, 1.5)], ALIBI)
    (curve,) = plot.load_curves([tmp_path / "a", tmp_path / "b"])  # same settings: one experiment
    assert curve.label == "alibi (tiny)"
    assert curve.series("val_loss") == ([31, 63], [2.0, 1.5])


def test_logs_of_validate_runs_are_left_out(tmp_path):
    write_run(tmp_path, "rope-tiny-1a2b3c4d", [val(31, 2.0)], ROPE)
    validate = write_run(tmp_path, "version_0", [val(0, 2.5)], ROPE)
    rows = validate.read_text().splitlines()
    validate.write_text("\n".join(line for i, line in enumerate(rows) if i != 1) + "\n")  # drop the train row
    (curve,) = plot.load_curves([tmp_path])
    assert curve.sources == [tmp_path / "lm" / "rope-tiny-1a2b3c4d" / "metrics.csv"]


def test_perplexity_falls_back_to_exp_of_the_loss(tmp_path):
    path = write_run(tmp_path, "none-tiny-1a2b3c4d", [{"step": 7, "val_loss": 0.0}], {"pe_type": "none"})
    (curve,) = plot.load_curves([path])
    assert curve.perplexity() == ([7], [1.0])


def test_main_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "s1", "rope-tiny-1a2b3c4d", [val(31, 2.0, 10), val(63, 1.8, 20)], ROPE)
    write_run(tmp_path / "s2", "rope-tiny-1a2b3c4d", [val(63, 1.7, 18), val(95, 1.6, 30)], ROPE)
    write_run(tmp_path / "s1", "alibi-tiny-5e6f7a8b", [val(31, 2.1, 11), val(63, 1.9, 21)], ALIBI)
    output = tmp_path / "out" / "curves.png"
    assert plot.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "-o", str(output), "--title", "t"]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 curves: rope (tiny), alibi (tiny)" in capsys.readouterr().out


def test_without_wall_time_only_the_step_plots_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path, "rope-tiny-1a2b3c4d", [val(31, 2.0), val(63, 1.8)], ROPE)
    assert plot.main([str(tmp_path), "-o", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_missing_matplotlib_is_one_line(tmp_path, monkeypatch, capsys):
    write_run(tmp_path, "rope-tiny-1a2b3c4d", [val(31, 2.0)], ROPE)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == 'error: plotting needs matplotlib: pip install -e ".[plot]"\n'


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: p, "no metrics.csv in it"),
        (lambda p: write_run(p, "rope-tiny-1a2b3c4d", [train(1, 2.0)], ROPE).parent, "no validation loss logged"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, make, message):
    assert plot.main([str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_plotting_does_not_load_lightning_or_torch():
    code = "import sys, lightning_app.commands.plot; sys.exit(bool({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# -- the history published with the checkpoints: version folders, datasets, a sweep's trials ------------------------


def write_version(folder: Path, run_id: str, rows: list[dict], settings: dict = ROPE, step: int = 64) -> Path:
    """A dataset version as the sync publishes it: a checkpoint's manifest and the run's metrics.csv."""
    folder.mkdir(parents=True)
    entry = {"file": "kaggle_epoch_1_20261206-010203.ckpt", "epoch": 1, "global_step": step, "run_id": run_id}
    manifest = {"format": 1, "checkpoints": [{**entry, "timestamp": "20261206-010203", "settings": settings}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows([train(0, 3.0), *rows])
    return folder


def test_downloaded_versions_are_curves_of_their_runs(tmp_path):
    # Two versions of one run (any folder names) are one curve; another run of the same model is its own curve.
    write_version(tmp_path / "v3", "run-a", [val(31, 2.0)], step=32)
    write_version(tmp_path / "v5", "run-a", [val(31, 2.0), val(63, 1.7)])
    write_version(tmp_path / "other" / "v2", "run-b", [val(31, 2.4)], ALIBI)
    curves = plot.load_curves([tmp_path / "v3", tmp_path / "v5", tmp_path / "other"])
    assert [(c.label, c.series("val_loss")) for c in curves] == [
        ("rope (tiny)", ([31, 63], [2.0, 1.7])),
        ("alibi (tiny)", ([31], [2.4])),
    ]


def test_a_sweeps_trials_over_a_training_knob_are_one_curve_each(tmp_path):
    write_run(tmp_path, "rope-tiny-1a2b3c4d-0000aaaa", [val(31, 2.0)], ROPE)
    write_run(tmp_path, "rope-tiny-1a2b3c4d-1111bbbb", [val(31, 2.5)], ROPE)  # same model, another lr
    labels = sorted(c.label for c in plot.load_curves([tmp_path]))
    assert labels == ["rope (tiny) [0000aaaa]", "rope (tiny) [1111bbbb]"]


def test_a_dataset_is_read_through_the_api(tmp_path, kaggle_env, fake_kaggle, capsys):
    version = write_version(tmp_path / "published", "run-a", [val(31, 2.0), val(63, 1.7)])
    files = {name: (version / name).read_bytes() for name in ("manifest.json", "metrics.csv")}
    fake_kaggle.add_dataset("fake-user/rope-tiny-1a2b3c4d-checkpoints", "rope run", files)
    curves = plot.load_curves(["fake-user/rope-tiny-1a2b3c4d-checkpoints"], tmp_path / "downloads")
    assert [(c.label, c.series("val_loss")) for c in curves] == [("rope (tiny)", ([31, 63], [2.0, 1.7]))]
    assert plot.main(["fake-user/no-such-dataset", "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fake-user/no-such-dataset: could not read the dataset (") and err.count("\n") == 1
