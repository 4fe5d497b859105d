"""A session's plan, its generated kernel, and the command it runs: ``fit`` and ``sweep`` alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_app.errors import ConfigError
from lightning_app.launch.accelerators import machine_shape
from lightning_app.launch.kernel_session import command_argv
from lightning_app.launch.plan import Plan
from lightning_app.launch.script import metadata, render_script, write_kernel


def make_plan(command: str = "fit", **changes) -> Plan:
    fields = dict(
        kernel="alice/rope-small-1a2b3c4d",
        command=command,
        args=("--config", {"code": "smoke.yaml"}, "--model.pe_type", "rope"),
        checkpoints="alice/rope-small-1a2b3c4d-checkpoints" if command == "fit" else None,
        accelerator="NvidiaTeslaT4",
        keep_quota_hours=2.0,
        wheel="kaggle_resumable_lm-0.1.0-py3-none-any.whl",
        launch_command="python -m lightning_app launch -- fit --config configs/smoke.yaml",
        launched_at=1_800_000_000.0,
    )
    return Plan(**{**fields, **changes})


def test_a_plan_goes_through_json_and_the_next_one_has_its_own_token():
    plan = make_plan()
    assert Plan.from_json(plan.to_json()) == plan
    following = plan.next(by_version=7)
    assert following.pushed_by == 7 and following.token != plan.token and following.pushed_at >= plan.pushed_at
    assert (following.kernel, following.args, following.launched_at) == (plan.kernel, plan.args, plan.launched_at)
    assert (plan.code_dataset, plan.chain_dataset, plan.stop_dataset) == (
        "alice/rope-small-1a2b3c4d-code",
        "alice/rope-small-1a2b3c4d-chain",
        "alice/rope-small-1a2b3c4d-stop",
    )


@pytest.mark.parametrize("command", ["fit", "sweep"])
def test_the_command_a_session_runs(command):
    code = Path("/kaggle/input/datasets/alice/rope-small-1a2b3c4d-code")
    argv = command_argv(make_plan(command), code, ["--deadline.budget", "3600s"])
    expected = [command, "--config", str(code / "smoke.yaml"), "--model.pe_type", "rope", "--deadline.budget", "3600s"]
    # fit continues from its newest published checkpoint; a sweep skips, resumes or starts each trial by itself
    assert argv[1:] == ["-m", "lightning_app", *expected, *(["--resume"] if command == "fit" else [])]


def test_the_generated_kernel(tmp_path):
    plan = make_plan("sweep")
    folder = write_kernel(plan, [plan.code_dataset], tmp_path / "kernel")
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    assert meta == metadata(plan, [plan.code_dataset])
    assert meta["id"] == plan.kernel and meta["title"] == plan.slug and meta["code_file"] == f"{plan.slug}.py"
    assert meta["is_private"] is True and meta["enable_internet"] is True and meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["dataset_sources"] == [plan.code_dataset]
    source = (folder / f"{plan.slug}.py").read_text()
    assert source == render_script(plan) and plan.token in source
    compile(source, "kernel.py", "exec")
    cpu = metadata(make_plan(accelerator=None), [])
    assert "machine_shape" not in cpu and cpu["enable_gpu"] is False


def test_the_script_installs_from_the_mounted_code_and_hands_over_the_plan(tmp_path):
    """Run the generated script with stand-ins for pip and for the session module: what it would do on Kaggle."""
    plan = make_plan("sweep")
    root = tmp_path / "kaggle"
    code = root / "input" / "datasets" / "alice" / "rope-small-1a2b3c4d-code"
    code.mkdir(parents=True)
    (code / plan.wheel).write_bytes(b"a wheel")
    stubs = tmp_path / "stubs"
    record = "import json, os, sys; open(os.environ['RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    for module in ("pip", "lightning_app/launch/kernel_session"):
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__main__.py").write_text(record)
    for package in ("pip", "lightning_app", "lightning_app/launch", "lightning_app/launch/kernel_session"):
        (stubs / package / "__init__.py").write_text("")  # regular packages: found before the installed ones
    script = tmp_path / "kernel.py"
    script.write_text(render_script(plan))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(stubs), "LIGHTNING_APP_KAGGLE_ROOT": str(root)}
    env["RECORD"] = str(tmp_path / "record")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    install, session = [json.loads(line) for line in (tmp_path / "record").read_text().splitlines()]
    assert install == ["install", "--quiet", str(code / plan.wheel), "kaggle>=2.2.1"]
    assert session[0] == str(code) and Plan.from_json(session[1]) == plan


def test_accelerators():
    assert machine_shape("NvidiaTeslaT4") == "NvidiaTeslaT4" and machine_shape("none") is None
    with pytest.raises(ConfigError, match=r"P100 \(sm_60\) is not supported .* NvidiaTeslaT4 \(GPU T4 x2\)"):
        machine_shape("NvidiaTeslaP100")
    with pytest.raises(ConfigError, match=r"--accelerator: got 'TpuV5E8'; expected one of: NvidiaTeslaT4, NvidiaL4"):
        machine_shape("TpuV5E8")
