"""Shared pytest fixtures."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_kaggle import UNSET_VARS, FakeKaggle

# -- the CLI runs of the tests fork from one warm interpreter -------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _fork_cli_runs() -> Iterator[None]:
    """`tests.cli_helpers.run` forks ``python -m lightning_app`` runs from a server started at first use."""
    from tests import cli_helpers

    cli_helpers.FORK_SERVER_ENABLED = True
    yield
    cli_helpers.FORK_SERVER_ENABLED = False
    cli_helpers.stop_fork_server()


# -- fake Kaggle server ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_kaggle() -> Iterator[FakeKaggle]:
    """A started fake Kaggle API server on 127.0.0.1 (see ``tests/fake_kaggle``); stopped afterwards."""
    with FakeKaggle(hang_limit=20.0) as fake:
        yield fake


@pytest.fixture
def kaggle_env(fake_kaggle: FakeKaggle, tmp_path, monkeypatch) -> dict[str, str]:
    """Point the real ``kaggle`` client at ``fake_kaggle``: in this process's ``os.environ`` (so child processes
    inherit it) and as the returned dict of the variables set (for ``subprocess.run(env={**os.environ, ...})``).
    """
    tempfile.gettempdir()  # cache this process's temp dir first: TMPDIR below is for child processes
    env = fake_kaggle.env(tmp_path)
    for name in UNSET_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# -- an uninterrupted smoke run to compare resumed runs with -----------------------------------------------------


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """`smoke.yaml` with `RESUME_FLAGS`, never interrupted: the reference every resumed run must equal."""
    from tests.cli_helpers import RESUME_FLAGS, cli_env, fit_args, run

    work = tmp_path_factory.mktemp("uninterrupted")
    result = run(fit_args(*RESUME_FLAGS), work, cli_env(work / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    return work


@pytest.fixture
def stage(tmp_path):
    """``stage(name, {file: bytes})`` -> a fresh folder holding exactly those files."""

    def make(name: str, files: dict[str, bytes]) -> Path:
        folder = tmp_path / "stage" / name
        folder.mkdir(parents=True)
        for file_name, data in files.items():
            (folder / file_name).write_bytes(data)
        return folder

    return make
