"""Find Kaggle credentials the way ``KaggleApi`` does, and say where they came from without ever holding the key.

The client's order (kaggle 1.8 and 2.x; `tests/persistence/test_credentials_order.py` holds it against the
installed client, so that a client release that changes it fails a test rather than a user):

1. an access token: in a notebook the session's token (the file named by ``KAGGLE_API_V1_TOKEN``), then
   ``KAGGLE_API_TOKEN`` (the token or a file holding it), then ``~/.kaggle/access_token`` (or ``access_token.txt``);
2. ``KAGGLE_USERNAME`` / ``KAGGLE_KEY`` environment variables (the legacy key);
3. ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR`` (default ``~/.kaggle`` if it exists, else ``~/.config/kaggle``), then
   the OAuth credentials that ``kaggle auth login`` caches in ``~/.kaggle/credentials.json``.

Inside a Kaggle notebook, when none of those is set, the user's Secrets are read, in this order: a Secret named
``KAGGLE_API_TOKEN``, then the Secrets ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``; they are exported into
``os.environ`` so that the client (in this process and in child processes) finds them. Whether a notebook's session
token may create datasets is not documented: `secrets_fallback` gives the environment in which the client uses the
user's Secrets instead, for a store to try once when the credential it prefers is refused.

This process never imports the client (its import logs in, over the network for a token, and prints), so the
order is read here from the same variables and files; what only a login can tell (the user a token belongs to)
is asked of the client in a child process (`Operation.WHOAMI`).

Credentials are never command-line options. ``KaggleCredentials`` holds a username and a source, never a key.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lightning_app.session import in_kaggle_notebook

#: How to give this project credentials, the current way first; every line that names credentials uses it.
NO_CREDENTIALS_ADVICE = (
    "create an API token on kaggle.com (Settings -> API -> Create New Token) and set KAGGLE_API_TOKEN to it (in a "
    "Kaggle notebook: Add-ons -> Secrets -> a Secret named KAGGLE_API_TOKEN); or, with a legacy API key, set "
    "KAGGLE_USERNAME and KAGGLE_KEY (Secrets of those names in a notebook) or put kaggle.json in ~/.kaggle"
)
#: What to do when Kaggle refuses a credential, the current way first.
REFUSED_ADVICE = (
    "create a new API token on kaggle.com (Settings -> API -> Create New Token) and set KAGGLE_API_TOKEN to it (a "
    "Secret of that name in a notebook), or check the legacy KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json"
)
_REDACTED = "***"
_NOTEBOOK_TOKEN_SOURCE = "the notebook's KAGGLE_API_V1_TOKEN file"
_TOKEN_SECRET = "KAGGLE_API_TOKEN"
_KEY_SECRETS = ("KAGGLE_USERNAME", "KAGGLE_KEY")


@dataclass(frozen=True)
class KaggleCredentials:
    """Where the client will find its credentials. Holds no secret, so it is safe to log.

    Attributes:
        username: the Kaggle user, when known without a network call (None for access tokens).
        source: a phrase for log lines, e.g. ``"KAGGLE_USERNAME/KAGGLE_KEY environment variables"``.
        notebook_token: the notebook's own session token (what it may do is not documented), not the user's.
    """

    username: str | None
    source: str
    notebook_token: bool = False


def find_credentials() -> KaggleCredentials | None:
    """The credentials ``KaggleApi`` would use, in its own order; None when there are none.

    Inside a Kaggle notebook with no other credentials, the user's Secrets are read and exported into
    ``os.environ`` (the only side effect).
    """
    return _access_token() or _username_and_key() or _oauth_login() or _from_notebook_secrets()


@dataclass(frozen=True)
class Fallback:
    """Environment changes (``None``: remove the variable) under which the client uses ``credentials``."""

    env: dict[str, str | None]
    credentials: KaggleCredentials


def secrets_fallback() -> Fallback | None:
    """Inside a Kaggle notebook: the environment in which the client uses the user's Secrets (the token Secret
    first, then the key) instead of the credential it prefers now. None outside a notebook, without Secrets, when
    the client already uses them, or when a token file in ``~/.kaggle`` would still come before the key."""
    current = _token_sources(os.environ)
    for env, credentials in _secret_choices():
        if env.get(_TOKEN_SECRET):  # an environment variable comes before every token file
            in_use, blocked = bool(current) and current[0][0] == env[_TOKEN_SECRET], False
        else:
            in_use = not current and all(os.environ.get(name) == env[name] for name in _KEY_SECRETS)
            changed = {name: value for name, value in {**os.environ, **env}.items() if value is not None}
            blocked = bool(_token_sources(changed))
        if not (in_use or blocked):
            return Fallback(env, credentials)
    return None


def _secret_choices() -> list[tuple[dict[str, str | None], KaggleCredentials]]:
    """The notebook's Secrets as environments, the token first."""
    secrets = notebook_secrets()
    choices: list[tuple[dict[str, str | None], KaggleCredentials]] = []
    if token := secrets.get(_TOKEN_SECRET):
        env = {"KAGGLE_API_V1_TOKEN": None, _TOKEN_SECRET: token}
        choices.append((env, KaggleCredentials(None, _secret_source(_TOKEN_SECRET))))
    if all(secrets.get(name) for name in _KEY_SECRETS):
        env = {"KAGGLE_API_TOKEN": None, "KAGGLE_API_V1_TOKEN": None, **{n: secrets[n] for n in _KEY_SECRETS}}
        choices.append((env, KaggleCredentials(secrets["KAGGLE_USERNAME"], _secret_source(*_KEY_SECRETS))))
    return choices


def _secret_source(*names: str) -> str:
    return f"Kaggle Secret{'s' if len(names) > 1 else ''} {'/'.join(names)}"


def notebook_secrets() -> dict[str, str]:
    """The Kaggle Secrets ``KAGGLE_API_TOKEN``, ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` this notebook has (empty
    outside a Kaggle notebook, or without the module, or with the Internet off)."""
    if not in_kaggle_notebook():
        return {}
    try:
        from kaggle_secrets import UserSecretsClient  # only exists inside Kaggle notebooks

        client = UserSecretsClient()
    except Exception:  # noqa: BLE001 - missing module, Internet off: no Secrets
        return {}
    values = {}
    for name in (_TOKEN_SECRET, *_KEY_SECRETS):
        try:
            value = client.get_secret(name)
        except Exception:  # noqa: BLE001 - a Secret that is not attached raises
            continue
        if isinstance(value, str) and value:
            values[name] = value
    return values


def redact_secrets(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every known Kaggle key or token (and each of ``extra`` of 8+ characters) replaced by ``***``
    (for error messages and logs)."""
    secrets = {*_known_secrets(), *(s for s in extra if s and len(s) >= 8)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


def config_dir() -> Path:
    """The folder ``KaggleApi`` reads ``kaggle.json`` from (its own rule)."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    legacy = Path.home() / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def _read_text(path: str | os.PathLike) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _token_sources(env: Mapping[str, str] = os.environ) -> list[tuple[str, str]]:
    """(token, source) pairs in the client's order under ``env``; the first is the one it uses."""
    found: list[tuple[str, str]] = []
    # kagglesdk only trusts KAGGLE_API_V1_TOKEN in a notebook that also has its data proxy.
    if env.get("KAGGLE_KERNEL_RUN_TYPE") and env.get("KAGGLE_DATA_PROXY_URL"):
        path = env.get("KAGGLE_API_V1_TOKEN")
        token = _read_text(path) if path else None
        if token:
            found.append((token, _NOTEBOOK_TOKEN_SOURCE))
    value = env.get("KAGGLE_API_TOKEN")
    if value:
        if Path(value).exists():
            token = _read_text(value)
            if token:
                found.append((token, "the file named by KAGGLE_API_TOKEN"))
        else:
            found.append((value, "KAGGLE_API_TOKEN environment variable"))
    for name in ("access_token", "access_token.txt"):
        token = _read_text(Path.home() / ".kaggle" / name)
        if token:
            found.append((token, f"~/.kaggle/{name}"))
    return found


def _kaggle_json() -> dict[str, str]:
    text = _read_text(config_dir() / "kaggle.json")
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _access_token() -> KaggleCredentials | None:
    sources = _token_sources()
    if not sources:
        return None
    return KaggleCredentials(None, f"access token from {sources[0][1]}", sources[0][1] == _NOTEBOOK_TOKEN_SOURCE)


def _username_and_key() -> KaggleCredentials | None:
    # The client overlays KAGGLE_* variables on kaggle.json, so either may supply either half.
    from_file = _kaggle_json()
    username = os.environ.get("KAGGLE_USERNAME") or from_file.get("username")
    key = os.environ.get("KAGGLE_KEY") or from_file.get("key")
    if not (username and key):
        return None
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return KaggleCredentials(username, "KAGGLE_USERNAME/KAGGLE_KEY environment variables")
    return KaggleCredentials(username, f"{config_dir() / 'kaggle.json'}")


def _oauth_login() -> KaggleCredentials | None:
    path = Path.home() / ".kaggle" / "credentials.json"
    if not path.is_file():
        return None
    try:
        username = json.loads(path.read_text()).get("username")
    except (OSError, ValueError, AttributeError):
        return None
    return KaggleCredentials(username if isinstance(username, str) else None, "`kaggle auth login` (OAuth)")


def _from_notebook_secrets() -> KaggleCredentials | None:
    choices = _secret_choices()
    if not choices:
        return None
    env, credentials = choices[0]
    os.environ.update({k: v for k, v in env.items() if v is not None})
    return credentials


def _known_secrets() -> list[str]:
    """Every key or token this process could be using; longest first so that no fragment survives."""
    candidates = [os.environ.get("KAGGLE_KEY"), _kaggle_json().get("key")]
    candidates += [token for token, _ in _token_sources()]
    # Short values would redact ordinary words; real keys and tokens are 32+ characters.
    return sorted({c for c in candidates if c and len(c) >= 8}, key=len, reverse=True)
