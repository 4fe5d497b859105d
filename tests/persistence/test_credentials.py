"""find_credentials follows KaggleApi's order and never holds the key."""

from __future__ import annotations

import json
import sys
import types

import pytest

from lightning_app.persistence.kaggle import credentials
from lightning_app.persistence.kaggle.credentials import KaggleCredentials, find_credentials, redact_secrets

KEY = "0123456789abcdef0123456789abcdef"
VARS = (
    "KAGGLE_API_TOKEN",
    "KAGGLE_API_V1_TOKEN",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_DATA_PROXY_URL",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_CONFIG_DIR",
    "XDG_CONFIG_HOME",
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no Kaggle variables (restored afterwards, even those the code under test exports)."""
    for name in VARS:
        monkeypatch.setenv(name, "recorded-for-undo")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _kaggle_json(folder, username="json-user", key=KEY):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kaggle.json").write_text(json.dumps({"username": username, "key": key}))


def test_nothing_found(home):
    assert find_credentials() is None


def test_access_token_comes_first(home, monkeypatch):
    _kaggle_json(home / ".kaggle")
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    (home / ".kaggle" / "access_token").write_text("KGAT_from_file_123456\n")
    assert find_credentials() == KaggleCredentials(None, "access token from ~/.kaggle/access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_value_1234567")
    assert find_credentials().source == "access token from KAGGLE_API_TOKEN environment variable"
    token_file = home / "token.txt"
    token_file.write_text("KGAT_in_a_file_1234")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    assert find_credentials().source == "access token from the file named by KAGGLE_API_TOKEN"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://proxy")
    monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(token_file))
    assert "KAGGLE_API_V1_TOKEN" in find_credentials().source
    assert redact_secrets("t=KGAT_in_a_file_1234 k=" + KEY) == "t=*** k=***"


def test_environment_variables_over_kaggle_json(home, monkeypatch):
    _kaggle_json(home / ".kaggle")
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    found = find_credentials()
    assert found == KaggleCredentials("env-user", "KAGGLE_USERNAME/KAGGLE_KEY environment variables")
    assert KEY not in repr(found) + str(found)


def test_kaggle_json_locations(home, tmp_path, monkeypatch):
    _kaggle_json(home / ".config" / "kaggle", username="xdg-user")  # kaggle 2.x default without ~/.kaggle
    assert find_credentials().username == "xdg-user"
    _kaggle_json(home / ".kaggle", username="legacy-user")
    assert find_credentials().username == "legacy-user"
    _kaggle_json(tmp_path / "elsewhere", username="configured-user")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "elsewhere"))
    found = find_credentials()
    assert found.username == "configured-user" and found.source.endswith("kaggle.json")
    assert redact_secrets(f"oops {KEY}") == "oops ***"
    (tmp_path / "elsewhere" / "kaggle.json").write_text("{not json")
    assert find_credentials() is None


def test_oauth_login_cache(home):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "credentials.json").write_text(json.dumps({"username": "oauth-user", "refresh_token": "x"}))
    assert find_credentials() == KaggleCredentials("oauth-user", "`kaggle auth login` (OAuth)")


def _fake_secrets(monkeypatch, values: dict[str, str] | None):
    class UserSecretsClient:
        def get_secret(self, name):
            if values is None or name not in values:
                raise KeyError(name)
            return values[name]

    monkeypatch.setitem(sys.modules, "kaggle_secrets", types.SimpleNamespace(UserSecretsClient=UserSecretsClient))


def test_notebook_secrets_are_exported(home, monkeypatch):
    _fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "secret-user", "KAGGLE_KEY": KEY})
    assert find_credentials() is None  # not in a notebook: secrets are not even looked at
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    found = find_credentials()
    assert found == KaggleCredentials("secret-user", "Kaggle Secrets KAGGLE_USERNAME/KAGGLE_KEY")
    assert credentials.os.environ["KAGGLE_KEY"] == KEY and credentials.os.environ["KAGGLE_USERNAME"] == "secret-user"


def test_missing_secrets_mean_not_found(home, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)  # module absent: ImportError
    assert find_credentials() is None
    _fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "only-the-user"})
    assert find_credentials() is None
    assert "KAGGLE_USERNAME" not in credentials.os.environ
