"""A session in the kernel: its credentials must be the user's Secrets, never only the notebook's own token."""

from __future__ import annotations

import json
import os
import sys

from lightning_app.launch.kernel_session import KernelSession
from lightning_app.launch.plan import Plan
from tests.fake_kaggle import UNSET_VARS


def _session(tmp_path, monkeypatch, secrets: dict[str, str]) -> KernelSession:
    for name in (*UNSET_VARS, "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "session-token"
    token.write_text("KGAT_the_notebooks_own")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(token))
    monkeypatch.setenv("LIGHTNING_APP_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "kaggle_secrets.py").write_text(
        f"class UserSecretsClient:\n    def get_secret(self, label):\n        return {json.dumps(secrets)}[label]\n"
    )
    monkeypatch.syspath_prepend(str(stubs))
    monkeypatch.delitem(sys.modules, "kaggle_secrets", raising=False)
    plan = Plan("alice/lm-chain", "fit", (), "alice/lm-chain-checkpoints", None, 0.0, "x.whl", "launch", 0.0)
    return KernelSession(plan, tmp_path)


def test_the_notebooks_own_token_is_not_enough(tmp_path, monkeypatch, capsys):
    assert _session(tmp_path, monkeypatch, {}).run() == 1
    out = capsys.readouterr().out
    assert "no Kaggle credentials in this kernel" in out and "KAGGLE_API_TOKEN" in out
    assert "https://www.kaggle.com/code/alice/lm-chain/edit" in out


def test_the_secrets_come_before_the_notebooks_own_token(tmp_path, monkeypatch):
    session = _session(tmp_path, monkeypatch, {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k" * 32})
    credentials = session._use_secrets()
    assert credentials.username == "alice" and not credentials.notebook_token
    assert "KAGGLE_API_V1_TOKEN" not in os.environ and os.environ["KAGGLE_KEY"] == "k" * 32
