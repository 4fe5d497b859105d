"""``python -m lightning_app checkpoints``: what ``--resume`` would see, and the one line when the dataset cannot be
read."""

from __future__ import annotations

from lightning_app.commands.checkpoints import main
from lightning_app.persistence.directory_store import DirectoryStore
from lightning_app.persistence.folder import CheckpointFolder
from tests.persistence.test_restore import make_checkpoint


def test_the_table_marks_the_one_resume_takes_and_downloads_nothing_to_list(tmp_path, capsys):
    make_checkpoint(tmp_path / "checkpoints", 0, 10)
    staged = tmp_path / "staged"
    newer = make_checkpoint(staged, 1, 40)
    store = DirectoryStore(tmp_path / "store")
    store.publish(CheckpointFolder(staged).stage([CheckpointFolder(staged).manifest.entries[newer.name]]), "v1")
    args = ["--dirpath", str(tmp_path / "checkpoints"), "--input_dir", str(tmp_path / "none")]
    assert main([*args, "--directory", str(store.root)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "kaggle_epoch_" in line]
    assert rows[0].startswith("*") and "remote" in rows[0] and " 40 " in rows[0]
    assert "local" in rows[1] and rows[1].rstrip().endswith("yes")
    assert "would continue a run from before run ids from kaggle_epoch_1_" in table


def test_a_dataset_that_cannot_be_read_is_the_resume_line_and_exit_2(kaggle_env, fake_kaggle, tmp_path, capsys):
    fake_kaggle.fail_next(10_000, status=500, methods=("GetDatasetStatus", "GetDataset", "ListDatasetFiles"))
    args = ["--dirpath", str(tmp_path / "checkpoints"), "--input_dir", str(tmp_path / "none"), "--timeout", "3s"]
    assert main([*args, "--dataset", "fake-user/lm-checkpoints"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: could not read kaggle:fake-user/lm-checkpoints (")
