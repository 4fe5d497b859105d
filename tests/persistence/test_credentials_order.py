"""`find_credentials` copies the ``kaggle`` client's private lookup order: held here against the installed client's
own behaviour, so that a client release that changes the order fails this test rather than a user.

Each credential source is given a user of its own; the real client, in a child process against the fake server,
says whom it logged in as (a token's user comes from the server's IntrospectToken, a key's from its config), and
that must be the user of the source `find_credentials` names. Run with both CI clients (2.x and 1.8.3).
"""

from __future__ import annotations

import json

import pytest

from lightning_app.persistence.kaggle.credentials import find_credentials
from lightning_app.persistence.kaggle.store import login_username

#: (what is set, the source find_credentials must name): every source present, in the order the client ranks them.
SOURCES = {
    "session": "access token from the notebook's KAGGLE_API_V1_TOKEN file",
    "token_env": "access token from KAGGLE_API_TOKEN environment variable",
    "token_file": "access token from the file named by KAGGLE_API_TOKEN",
    "access_token": "access token from ~/.kaggle/access_token",
    "key_env": "KAGGLE_USERNAME/KAGGLE_KEY environment variables",
    "kaggle_json": "kaggle.json",
}


@pytest.fixture
def machine(kaggle_env, fake_kaggle, tmp_path, monkeypatch):
    """A machine with no credentials, whose HOME and config folder are fresh; ``give(source)`` adds one."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))

    def token(source: str) -> str:
        value = f"KGAT_{source}_" + "0" * 24
        fake_kaggle.state.usernames_by_token[value] = f"user-{source.replace('_', '-')}"
        return value

    def give(source: str) -> None:
        if source == "session":
            (tmp_path / "session-token").write_text(token(source))
            monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
            monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://127.0.0.1:9")  # only read to trust the file
            monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(tmp_path / "session-token"))
        elif source == "token_env":
            monkeypatch.setenv("KAGGLE_API_TOKEN", token(source))
        elif source == "token_file":
            (tmp_path / "token.txt").write_text(token(source))
            monkeypatch.setenv("KAGGLE_API_TOKEN", str(tmp_path / "token.txt"))
        elif source == "access_token":
            (home / ".kaggle" / "access_token").write_text(token(source))
        elif source == "key_env":
            monkeypatch.setenv("KAGGLE_USERNAME", "user-key-env")
            monkeypatch.setenv("KAGGLE_KEY", fake_kaggle.key)
        elif source == "kaggle_json":
            (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "user-kaggle-json", "key": "k" * 32}))

    return give


@pytest.mark.parametrize(
    "present",
    [
        ["session", "token_env", "access_token", "key_env", "kaggle_json"],
        ["token_env", "access_token", "key_env", "kaggle_json"],
        ["token_file", "access_token", "key_env"],
        ["access_token", "key_env", "kaggle_json"],
        ["key_env", "kaggle_json"],
        ["kaggle_json"],
    ],
    ids=lambda present: present[0],
)
def test_the_client_uses_the_source_find_credentials_names(machine, present):
    for source in present:
        machine(source)
    found = find_credentials()
    assert found is not None and found.source.endswith(SOURCES[present[0]]), found
    assert login_username(30.0) == f"user-{present[0].replace('_', '-')}"
