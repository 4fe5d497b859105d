"""``python -m lightning_app launch``: its exits (0 started, 1 failed after retries, 2 bad input, 3 nothing
started), ``--stop`` and ``--status``, in this process against the fake server (the Kaggle calls in children)."""

from __future__ import annotations

import pytest

from lightning_app.commands.launch import main
from lightning_app.launch import retries
from lightning_app.launch.chain import ChainStore, StopRequest
from tests.cli_helpers import SMOKE

KERNEL = "fake-user/lm-chain"
FIT = ["--", "fit", "--config", str(SMOKE), "--trainer.max_steps", "4"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "launch: expected `-- fit ARGS...` or `-- sweep ARGS...`"),
        (["--", "train"], "launch: got 'train' after '--'; expected one of: fit, sweep"),
        (["--accelerator", "NvidiaTeslaP100", *FIT], "P100 (sm_60) is not supported by the torch build of Kaggle"),
        (["--accelerator", "TpuV5E8", *FIT], "--accelerator: got 'TpuV5E8'; expected one of: NvidiaTeslaT4"),
        (["--keep_quota", "-1", *FIT], "--keep_quota: got -1.0; expected hours >= 0"),
        (["--kernel", "someone-else/lm-chain", *FIT], "the credentials are fake-user's"),
        (["--kernel", "fake-user/Bad_Slug", *FIT], "--kernel: got 'fake-user/Bad_Slug'; expected OWNER/SLUG"),
        (["--kernel", f"fake-user/{'x' * 45}", *FIT], "(5 to 44 characters)"),
        (["--status"], "--status: needs --kernel OWNER/SLUG"),
        (["--now", "--kernel", KERNEL], "--now: goes with --stop"),
    ],
)
def test_bad_input_is_one_line(argv, message, kaggle_env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_exits_stop_and_status(fake_kaggle, kaggle_env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(retries, "ATTEMPTS", 2)
    monkeypatch.setattr(retries, "BASE_DELAY", 0.01)
    fake_kaggle.add_kernel(KERNEL)  # made in the web editor: it runs at once

    fake_kaggle.fail_next(2, status=500, methods="SaveKernel")
    assert main(["--kernel", KERNEL, *FIT]) == 1
    assert "HTTP 500" in one_error_line(capsys) and fake_kaggle.kernel_sessions(KERNEL) == []

    fake_kaggle.refuse_next_push("Invalid kernel slug 'lm-chain': use lower-case letters, digits and hyphens")
    assert main(["--kernel", KERNEL, *FIT]) == 2
    assert one_error_line(capsys).startswith(f"error: --kernel: got '{KERNEL}'; Kaggle refused the push")

    assert main(["--kernel", KERNEL, *FIT]) == 0
    assert f"Started {KERNEL} version 2" in capsys.readouterr().out
    (session,) = fake_kaggle.kernel_sessions(KERNEL)
    assert session.source == (tmp_path / "kernels" / "lm-chain" / "lm-chain.py").read_text()
    assert session.dataset_sources == [f"{KERNEL}-code"] and session.machine_shape == "NvidiaTeslaT4"

    assert main(["--kernel", KERNEL, *FIT]) == 3
    assert "Nothing started: a run of fake-user/lm-chain is already queued" in capsys.readouterr().out
    assert len(fake_kaggle.kernel_sessions(KERNEL)) == 1

    assert main(["--stop", "--now", "--kernel", KERNEL]) == 0
    out = capsys.readouterr().out
    assert f"Stop written ({KERNEL}-stop)" in out and f"cancel it on https://www.kaggle.com/code/{KERNEL}" in out
    stop = ChainStore(f"{KERNEL}-chain", f"{KERNEL}-stop").read().stop
    assert isinstance(stop, StopRequest) and stop.now

    assert main(["--status", "--kernel", KERNEL]) == 3
    out = capsys.readouterr().out
    assert "Now: version 2 is queued (QUEUED)." in out and "A stop was asked at" in out
    assert main(["--status", "--kernel", "fake-user/never-made"]) == 2
    assert "no such kernel of the logged-in user" in one_error_line(capsys)
