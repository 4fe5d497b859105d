"""Inside a notebook, a token that may not write falls back once to the user's Secrets; whose a token is, asked at
login. Through the real client and the fake server."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from lightning_app.experiment import experiment_name
from lightning_app.persistence.kaggle.credentials import secrets_fallback
from lightning_app.persistence.kaggle.store import KaggleDatasetStore, login_username
from lightning_app.persistence.store import AuthError, RefusedError
from lightning_app.persistence.sync_target import StoreOptions, make_store

REF = "fake-user/lm-checkpoints"
SESSION_TOKEN = "KGAT_session_" + "0" * 24


@pytest.fixture
def secrets(monkeypatch):
    """``kaggle_secrets`` as a notebook has it, holding what ``secrets.update(...)`` puts there."""
    values: dict[str, str] = {}

    class UserSecretsClient:
        def get_secret(self, name: str) -> str:
            return values[name]  # a missing secret raises, as the real one does

    monkeypatch.setitem(sys.modules, "kaggle_secrets", types.SimpleNamespace(UserSecretsClient=UserSecretsClient))
    return values


@pytest.fixture
def notebook(kaggle_env, fake_kaggle, tmp_path, monkeypatch, secrets):
    """A Kaggle notebook whose session token logs in as the user but may not create datasets, and whose Secrets
    hold the user's key."""
    fake_kaggle.add_token(SESSION_TOKEN, may_write=False)
    token_file = tmp_path / "session-token"
    token_file.write_text(SESSION_TOKEN)
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_DATA_PROXY_URL", "http://127.0.0.1:9")  # only read to trust the token file
    monkeypatch.setenv("KAGGLE_API_V1_TOKEN", str(token_file))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/access_token of the machine's user
    secrets.update(KAGGLE_USERNAME=fake_kaggle.username, KAGGLE_KEY=fake_kaggle.key)
    return secrets


@pytest.fixture
def store(kaggle_env, monkeypatch) -> KaggleDatasetStore:
    monkeypatch.setattr(KaggleDatasetStore, "settle_pause", 0.01)
    return KaggleDatasetStore(REF, title="LM checkpoints", call_timeout=30.0)


def _sync_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "lightning_app.sync")


def test_a_token_that_may_not_write_falls_back_to_the_secrets(notebook, store, stage, fake_kaggle, caplog):
    caplog.set_level(logging.INFO, "lightning_app.sync")
    first = store.publish(stage("one", {"a.ckpt": b"1"}), "epoch 0")
    second = store.publish(stage("two", {"a.ckpt": b"22"}), "epoch 1")
    assert (first.number, second.number) == (1, 2)
    assert [v.notes for v in fake_kaggle.versions(REF)][-1] == "epoch 1"
    refused = [r for r in fake_kaggle.calls("CreateDataset") if r.status == 403]
    assert len(refused) == 1, "the session token was tried again after the Secrets worked"
    log = _sync_log(caplog)
    assert "Kaggle refused access token from the notebook's KAGGLE_API_V1_TOKEN file" in log
    assert "trying Kaggle Secrets KAGGLE_USERNAME/KAGGLE_KEY instead" in log
    assert log.count("Kaggle Secrets KAGGLE_USERNAME/KAGGLE_KEY work: they publish from now on") == 1
    assert fake_kaggle.key not in log and SESSION_TOKEN not in log


def test_secrets_are_tried_once_and_the_refusal_says_so(notebook, store, stage, fake_kaggle):
    notebook["KAGGLE_KEY"] = "not-the-key-" + "x" * 20
    with pytest.raises((AuthError, RefusedError)) as caught:
        store.publish(stage("one", {"a.ckpt": b"1"}), "epoch 0")
    assert "(with Kaggle Secrets KAGGLE_USERNAME/KAGGLE_KEY too)" in str(caught.value)
    with pytest.raises(RefusedError):  # the session token again, with no second fallback
        store.publish(stage("two", {"a.ckpt": b"1"}), "epoch 0")
    assert len(fake_kaggle.calls("CreateDataset")) == 2 and not fake_kaggle.datasets
    assert notebook["KAGGLE_KEY"] not in str(caught.value)


def test_no_fallback_outside_a_notebook_or_without_secrets(kaggle_env, fake_kaggle, secrets, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_preferred_" + "1" * 20)
    secrets.update(KAGGLE_USERNAME="someone", KAGGLE_KEY="k" * 32)
    assert secrets_fallback() is None  # not in a notebook
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    fallback = secrets_fallback()
    assert fallback is not None and fallback.env["KAGGLE_API_TOKEN"] is None
    assert fallback.env["KAGGLE_USERNAME"] == "someone" and fallback.credentials.username == "someone"
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "access_token").write_text("KGAT_file_" + "2" * 20)
    assert secrets_fallback() is None  # the token file would still come first
    (tmp_path / "home" / ".kaggle" / "access_token").unlink()
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k" * 32)
    assert secrets_fallback() is None  # the client uses the Secrets' values already
    del secrets["KAGGLE_KEY"]
    monkeypatch.setenv("KAGGLE_KEY", "other" * 8)
    assert secrets_fallback() is None  # no Secrets to fall back to


def test_whose_a_token_is_comes_from_the_login(kaggle_env, fake_kaggle, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.token)
    assert login_username(30.0) == fake_kaggle.username
    assert fake_kaggle.calls("IntrospectToken")
    fake_kaggle.refuse_credentials()
    with pytest.raises(AuthError, match="refused the credentials from access token from KAGGLE_API_TOKEN"):
        login_username(30.0)


def test_a_token_run_publishes_under_the_tokens_user(kaggle_env, fake_kaggle, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.token)
    settings = {"pe_type": "rope", "model_size": "tiny"}
    store = make_store(StoreOptions(), experiment_name(settings, {})).store
    assert store is not None and store.dataset == f"{fake_kaggle.username}/{experiment_name(settings, {})}-checkpoints"
    fake_kaggle.fail_next(1, status=503, methods="IntrospectToken")  # a blip at login is retried, not fatal
    assert make_store(StoreOptions(), experiment_name(settings, {})).store.dataset == store.dataset
    caplog.set_level(logging.WARNING, "lightning_app.sync")
    fake_kaggle.refuse_credentials()
    assert make_store(StoreOptions(), experiment_name(settings, {})).store is None
    assert "pass --sync.dataset OWNER/SLUG" in _sync_log(caplog) and fake_kaggle.token not in _sync_log(caplog)
