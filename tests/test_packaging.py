"""The wheel holds every module of the packages (setup.cfg lists them one by one: an editable install would hide a
missing one), and each imports from the wheel alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.cli_helpers import REPO

PACKAGES = ("lightning_app", "callbacks")


def _modules_in_the_tree() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@pytest.mark.slow
def test_the_wheel_holds_and_imports_every_module(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        held = {name for name in archive.namelist() if name.endswith(".py")}
        archive.extractall(tmp_path / "site")
    expected = {str(p.relative_to(REPO)) for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    assert expected <= held, f"missing from the wheel: {sorted(expected - held)}"

    modules = [m for m in _modules_in_the_tree() if not m.endswith("__main__")]
    check = (
        "import importlib, sys\n"
        f"site = {str(tmp_path / 'site')!r}\n"
        "sys.path.insert(0, site)\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
    )
    imported = subprocess.run([sys.executable, "-c", check, *modules], cwd=tmp_path, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]
