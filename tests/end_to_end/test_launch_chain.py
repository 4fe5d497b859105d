"""``launch`` end to end: the real CLI and the real client against the fake server, each pushed session run by the
test "Kaggle runner" (``tests/support/kaggle_runner.py``) as a Kaggle batch session would run it.

Sessions end at a step rather than a time (`EndSessionAfterSteps`: the deadline's own signal path), so that the
chain of ``configs/smoke.yaml`` (96 steps) takes exactly three sessions; a platform kill is `KillSessionAfterPublished`.
"""

from __future__ import annotations

import io
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from lightning_app.launch.chain import ChainState
from tests.cli_helpers import (
    RESUME_FLAGS,
    SMOKE,
    assert_same_training_state,
    cli_env,
    load,
    newest_checkpoint,
    resumed_step,
    run,
)
from tests.fake_kaggle import FakeKaggle
from tests.support.kaggle_runner import KaggleRunner, session_config

pytestmark = pytest.mark.slow

#: Each session trains this many steps at most: 96 steps take three sessions.
STEPS_PER_SESSION = 35
HOURS = 3600.0


class Chain:
    """``launch`` and ``launch --status`` as a user runs them, with ``configs`` added to the ``fit``, and a runner."""

    def __init__(self, fake: FakeKaggle, folder: Path, configs: list[Path], **runner) -> None:
        self.fake, self.folder, self.configs = fake, folder, configs
        self.env = cli_env(folder / "home", fake.env(folder))
        self.runner = KaggleRunner(fake, folder / "runner", **runner)

    def launch(self, *options: str):
        configs = [arg for path in self.configs for arg in ("--config", str(path))]
        fit = ["fit", "--config", str(SMOKE), *configs, *RESUME_FLAGS, "--sync.retry_delay", "0.1"]
        return run([sys.executable, "-m", "lightning_app", "launch", *options, "--", *fit], self.folder, self.env)

    def status(self, kernel: str):
        return run(
            [sys.executable, "-m", "lightning_app", "launch", "--status", "--kernel", kernel], self.folder, self.env
        )

    def state(self, kernel: str) -> ChainState:
        return ChainState.from_json(self.fake.versions(f"{kernel}-chain")[-1].files["chain.json"].decode())


def _output(result) -> str:
    return (result.stdout + result.stderr)[-4000:]


def test_a_fit_launched_once_runs_to_its_end_in_chained_sessions(fake_kaggle, tmp_path, uninterrupted):
    end = session_config(tmp_path, "platform", [("EndSessionAfterSteps", {"steps": STEPS_PER_SESSION})])
    chain = Chain(fake_kaggle, tmp_path, [end])

    saved = chain.launch()
    assert saved.returncode == 3, _output(saved)
    (kernel,) = fake_kaggle.state.kernels.kernels  # named after the experiment
    assert f"https://www.kaggle.com/code/{kernel}/edit" in saved.stdout and "KAGGLE_API_TOKEN" in saved.stdout
    assert [v.runs for v in fake_kaggle.kernel_versions(kernel)] == [False], "a new kernel is only saved"

    started = chain.launch()
    assert started.returncode == 0, _output(started)
    sessions = chain.runner.run_until_idle()

    assert len(sessions) == 3 and [s.status for s in sessions] == ["COMPLETE"] * 3, [s.output[-3000:] for s in sessions]
    records = chain.state(kernel).sessions
    assert [r.version for r in records] == [s.number for s in sessions]
    assert records[0].pushed_by is None  # the user's launch, then each session started by the one before
    assert [r.pushed_by for r in records[1:]] == [r.version for r in records[:-1]]
    assert [r.decided for r in records] == ["pushed", "pushed", "finished"]
    for before, after in zip(sessions, records[1:]):
        assert after.command_start > before.ended, "two sessions of the chain trained at once"
    checkpoints = records[-1].step, records[-1].total_steps, fake_kaggle.versions(f"{kernel}-checkpoints")[-1]
    assert checkpoints[:2] == (96, 96)
    (name,) = [n for n in checkpoints[2].files if n.endswith(".ckpt")]
    final = torch.load(io.BytesIO(checkpoints[2].files[name]), map_location="cpu", weights_only=True)
    assert_same_training_state(final, load(newest_checkpoint(uninterrupted / "checkpoints")))

    code = f"{kernel}-code"
    assert len(fake_kaggle.versions(code)) == 1, "the code was published again although it had not changed"
    (wheel,) = [n for n in fake_kaggle.versions(code)[-1].files if n.endswith(".whl")]
    for session in sessions:
        mounted = session.root / "input" / "datasets" / code
        assert session.install == [["install", "--quiet", str(mounted / wheel), "kaggle>=2.2.1"]]
        assert session.touched_inputs == []
        assert not list(session.working.rglob("*.ckpt")), "checkpoints left in the kernel's output"
        assert (session.working / "launch-session.log").is_file()
    secrets = (fake_kaggle.key, fake_kaggle.token)
    texts = [v.source for v in fake_kaggle.kernel_versions(kernel)]
    texts += [p.read_text() for p in (tmp_path / "kernels").rglob("*") if p.is_file()]
    texts += [data.decode(errors="replace") for ref in (code, f"{kernel}-chain") for data in _files(fake_kaggle, ref)]
    assert not [text for text in texts for secret in secrets if secret in text], "a credential was written"

    status = chain.status(kernel)
    assert status.returncode == 0, _output(status)
    for record in records:
        assert f"\n{record.version} " in status.stdout
    assert "Finished: step 96 of 96" in status.stdout


def test_a_chain_through_its_edges(fake_kaggle, tmp_path):
    """No Secrets at first, then a session killed by the platform, then the weekly quota running out."""
    kernel = "fake-user/lm-edges"
    platform = session_config(
        tmp_path,
        "platform",
        [
            ("KillSessionAfterPublished", {"global_step": 20, "marker": str(tmp_path / "killed-once")}),
            ("EndSessionAfterSteps", {"steps": STEPS_PER_SESSION}),
        ],
    )
    chain = Chain(fake_kaggle, tmp_path, [platform], secrets={})
    fake_kaggle.add_kernel(kernel)  # it exists: the first launch runs it at once

    started = chain.launch("--kernel", kernel)
    assert started.returncode == 0, _output(started)
    (no_secrets,) = chain.runner.run_until_idle()
    assert no_secrets.status == "ERROR" and "no Kaggle credentials in this kernel" in no_secrets.output
    assert "Training " not in no_secrets.output and f"{kernel}-checkpoints" not in fake_kaggle.datasets
    status = chain.status(kernel)
    assert status.returncode == 3, _output(status)
    assert "KAGGLE_API_TOKEN" in status.stdout and f"https://www.kaggle.com/code/{kernel}/edit" in status.stdout

    chain.runner.secrets_file.write_text(f'{{"KAGGLE_API_TOKEN": "{fake_kaggle.token}"}}')  # the step, taken
    assert chain.launch("--kernel", kernel).returncode == 0
    (killed,) = chain.runner.run_until_idle()
    assert killed.returncode == -signal.SIGKILL and killed.status == "ERROR", killed.output[-3000:]

    refresh = datetime(2026, 12, 19, tzinfo=timezone.utc)
    fake_kaggle.set_gpu_quota(used=30 * HOURS - 1, allowed=30 * HOURS, refresh_at=refresh)  # a second left
    assert chain.launch("--kernel", kernel).returncode == 0
    (paused,) = chain.runner.run_until_idle()
    assert paused.status == "COMPLETE", paused.output[-3000:]
    assert resumed_step(paused.output) == 20, "the run did not go on from the last published checkpoint"
    records = {r.version: r for r in chain.state(kernel).sessions}
    assert records[no_secrets.number].ended.startswith("ended without a record")
    assert records[killed.number].ended == "ended before recording its end (Kaggle: ERROR)"
    assert records[paused.number].decided == "quota" and records[paused.number].step == 20 + STEPS_PER_SESSION
    assert len(fake_kaggle.kernel_sessions(kernel)) == 3, "a session was pushed without quota for it"
    status = chain.status(kernel)
    assert status.returncode == 3, _output(status)
    assert f"\n{killed.number} " in status.stdout and "ended before recording its end (Kaggle: ERROR)" in status.stdout
    assert "Paused for quota: paused until 2026-12-19 00:00 UTC" in status.stdout
    assert f"To go on: python -m lightning_app launch --kernel {kernel} -- fit" in status.stdout


def _files(fake: FakeKaggle, ref: str) -> list[bytes]:
    return [data for version in fake.versions(ref) for data in version.files.values()]
