"""Fixtures of the persistence tests."""

from __future__ import annotations

import tempfile

import pytest


@pytest.fixture
def api(fake_kaggle, kaggle_env, monkeypatch):
    """An authenticated in-process ``KaggleApi`` (whichever client is installed) talking to the fake server."""
    monkeypatch.setattr(tempfile, "tempdir", kaggle_env["TMPDIR"])  # the client's resumable-upload state
    with fake_kaggle.point_client_here():
        from kaggle.api.kaggle_api_extended import KaggleApi

        client = KaggleApi()
        client.authenticate()
        yield client
