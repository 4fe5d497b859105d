"""The snapshot writer: the same bytes as `torch.save`, whole files only, at a lower priority than training."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest
import torch

from lightning_app.persistence.snapshot import WRITER_NICENESS, HostSnapshot, SnapshotWriter, write_atomically


def _state() -> dict:
    weight = torch.randn(64, 32)
    return {"state_dict": {"w": weight, "tied": weight}, "step": 7, "rng": torch.get_rng_state(), "names": ["a"]}


def test_the_file_holds_exactly_what_torch_save_writes(tmp_path):
    state = _state()
    written = write_atomically(state, tmp_path / "a.ckpt")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = (tmp_path / "a.ckpt").read_bytes()
    assert data == buffer.getvalue()
    assert written.size == len(data) and written.sha256 == hashlib.sha256(data).hexdigest()
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"]) and loaded["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        write_atomically({"bad": lambda: None}, tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_the_host_copy_is_detached_from_later_changes_and_keeps_ties():
    state = _state()
    snapshot = HostSnapshot()
    copied = snapshot.copy(state)
    state["state_dict"]["w"].add_(1.0)
    assert not torch.equal(copied["state_dict"]["w"], state["state_dict"]["w"])
    assert copied["state_dict"]["w"] is copied["state_dict"]["tied"]  # one buffer for tied weights
    assert snapshot.copied is None  # nothing in flight on a GPU: the copy is complete when copy() returns


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice values are a POSIX/Linux feature")
def test_the_writer_thread_runs_at_a_lower_priority_than_training(tmp_path):
    seen: list[int] = []
    writer = SnapshotWriter(
        on_written=lambda written: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        on_error=lambda path, error: seen.append(-100),
    )
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer.submit(_state(), tmp_path / "a.ckpt")
    assert writer.wait(30)
    assert seen == [min(19, mine + WRITER_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # training's own is unchanged
