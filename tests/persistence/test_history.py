"""The run's metric history as it travels with its checkpoints: the rows before a checkpoint's step, and back."""

from __future__ import annotations

from lightning_app.persistence.history import count_rows, restore_history, rows_before

HEADER = "epoch,lr,step,train_loss,val_loss\n"


def _rows(*steps: int, tag: str = "a") -> str:
    return "".join(f"0,0.001,{s},{tag}{s},\n" for s in steps)


def test_rows_before_a_step_keep_the_header_and_drop_later_and_torn_rows():
    text = HEADER + _rows(0, 1, 2, 3) + "0,,3,,2.5\n" + "0,0.001,4,a4"  # the last line torn mid-write
    assert rows_before(text, 3) == HEADER + _rows(0, 1, 2)
    assert rows_before(text, 4) == HEADER + _rows(0, 1, 2, 3) + "0,,3,,2.5\n"
    assert rows_before("", 3) == "" and rows_before("a,b\n1,2\n", 3) == ""  # no step column: nothing to keep


def test_resuming_restores_the_published_history_over_what_a_killed_session_logged_here(tmp_path):
    log_file = tmp_path / "logs" / "lm" / "run" / "metrics.csv"
    log_file.parent.mkdir(parents=True)
    log_file.write_text(HEADER + _rows(0, 1, 2, 3, 4, 5, tag="killed"))  # this folder's session went on past step 3
    published = HEADER + _rows(0, 1, 2, 3, 4, tag="published")  # the version of the checkpoint at step 3... and one
    said = restore_history(log_file, 3, published)
    assert log_file.read_text() == HEADER + _rows(0, 1, 2, tag="published")
    assert said == f"metric history restored from the checkpoint's version into {log_file} (3 rows before step 3)"


def test_without_a_published_history_this_folders_log_is_cut_at_the_checkpoint(tmp_path):
    log_file = tmp_path / "metrics.csv"
    log_file.write_text(HEADER + _rows(0, 1, 2, 3, 4, 5))
    said = restore_history(log_file, 4, None)
    assert log_file.read_text() == HEADER + _rows(0, 1, 2, 3)
    assert said.endswith("(4 rows before step 4, 2 rows logged after it dropped)")
    assert count_rows(log_file.read_text()) == 4


def test_nothing_to_restore_leaves_nothing_behind(tmp_path):
    assert restore_history(tmp_path / "logs" / "metrics.csv", 4, None) is None
    assert not (tmp_path / "logs").exists()


def test_an_unknown_step_leaves_the_log_as_it_is(tmp_path):
    log_file = tmp_path / "metrics.csv"
    log_file.write_text("step,train_loss\n0,3.5\n1,3.4\n")
    assert restore_history(log_file, -1, "step,train_loss\n0,3.5\n") is None
    assert log_file.read_text() == "step,train_loss\n0,3.5\n1,3.4\n"
