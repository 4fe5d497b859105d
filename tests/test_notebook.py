"""notebooks/kaggle_quickstart.ipynb: valid nbformat v4, the seed's workflow, and commands the real CLI accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.cli_helpers import REPO, cli_env

NOTEBOOK = REPO / "notebooks" / "kaggle_quickstart.ipynb"
COMMAND = re.compile(r"^!python -m lightning_app (.+)$")

#: Runs each command the way ``python -m lightning_app`` does, all in one process (one import of torch, not one
#: per command); prints ``[{"args", "code", "out", "err"}]``. ``fit`` commands get ``--print_config`` (LightningCLI
#: parses, prints the resolved config and exits); the plain-argparse subcommands (``checkpoints``, ``plot``) stop
#: right after their parser accepted the arguments, before doing any work.
DRIVER = """
import argparse, contextlib, io, json, runpy, sys
parse_args = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise SystemExit(0)
results = []
for args in json.loads(sys.argv[1]):
    argparse.ArgumentParser.parse_args = parse_args if args[0] == "fit" else parse_then_stop
    sys.argv = ["lightning_app", *args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("lightning_app", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except Exception as error:  # a crash, not an exit: report it
            code, err = -1, io.StringIO(repr(error))
    results.append({"args": args, "code": code, "out": out.getvalue()[-4000:], "err": err.getvalue()[-2000:]})
print(json.dumps(results))
"""


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


def _code_cells() -> list[str]:
    return ["".join(c["source"]) for c in _notebook()["cells"] if c["cell_type"] == "code"]


def notebook_commands() -> list[list[str]]:
    """Every ``!python -m lightning_app ...`` line of the code cells, as argv lists, distinct, in order."""
    commands: list[list[str]] = []
    for source in _code_cells():
        for line in source.replace("\\\n", " ").splitlines():
            match = COMMAND.match(line.strip())
            if match:
                args = shlex.split(match[1], comments=True)
                if args not in commands:
                    commands.append(args)
    return commands


def test_notebook_is_valid_nbformat_v4():
    notebook = _notebook()
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "commit the notebook without outputs"
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=4))


def test_notebook_walks_through_the_seed_workflow():
    code = "\n".join(_code_cells())
    assert "pip install" in code
    assert "from kaggle_secrets import UserSecretsClient" in code
    assert 'os.environ["KAGGLE_USERNAME"]' in code and 'os.environ["KAGGLE_KEY"]' in code
    for line in code.splitlines():
        if "print(" in line:
            assert "KAGGLE_KEY" not in line, "the key must never be printed"
    commands = [" ".join(c) for c in notebook_commands()]
    first = "fit --config configs/kaggle_t4x2.yaml --model.pe_type rope"
    assert first in commands and f"{first} --resume" in commands
    assert any(c.startswith("checkpoints") for c in commands) and any(c.startswith("plot") for c in commands)


def test_every_command_parses_with_the_real_cli(tmp_path):
    commands = notebook_commands()
    assert len(commands) <= 6, "keep this test fast: one process runs them all"
    probes = [[*args, "--print_config"] if args[0] == "fit" else args for args in commands]
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(probes)],
        cwd=REPO,
        env=cli_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    failed = [f"{' '.join(o['args'])} -> {o['code']}: {o['err'].strip()[-500:]}" for o in outcomes if o["code"] != 0]
    assert not failed, "\n".join(failed)
    for outcome in outcomes:
        if outcome["args"][0] == "fit":
            assert "pe_type: rope" in outcome["out"] and "devices: 2" in outcome["out"], outcome["out"][-1000:]
