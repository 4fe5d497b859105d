"""The ``kaggle`` client inside the child process: logging in, and every difference between the client
generations this project supports (1.8.x, which Kaggle's notebook image pins, and 2.x), in one place.

- ``dataset_status(ref, format=...)`` (status and ``current_version_number`` in one call) exists from 2.1.1; on
  1.8 the same two kagglesdk requests are made here (GetDatasetStatus, GetDataset).
- Listings come back as ``files[i].name`` / ``total_bytes`` with ``next_page_token`` on every supported client.
- The client's own retry loop (``with_retry``) is switched off: each call is one bounded attempt, and the parent's
  retry policy (``retry.py``) decides whether another follows.

``kaggle`` is imported here only, lazily: importing it logs in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle.errors import login_failure
from lightning_app.persistence.kaggle.outcomes import CallFailed, FailureKind

_MAX_PAGES = 1000


def connect() -> Any:
    """The authenticated ``KaggleApi``, with the client's own retry loop turned off."""
    try:
        from kaggle import api  # authenticates at import: 2.x prints help and carries on without credentials
    except ImportError as error:
        raise CallFailed(FailureKind.ERROR, f"the kaggle package is not installed ({error})") from error
    except (OSError, SystemExit) as error:
        raise login_failure(error) from error
    try:
        # Again when the import did not log in, so that missing credentials are reported (2.x calls exit(1)); not
        # after a token login: 1.8 then removes KAGGLE_API_TOKEN from os.environ and a second login finds nothing.
        if not (getattr(api, "config_values", None) or {}).get("username"):
            api.authenticate()
    except (OSError, SystemExit) as error:
        raise login_failure(error) from error
    # A create retried by the client after a lost reply makes a second version: the parent checks first.
    api.with_retry = _one_attempt
    return api


def _one_attempt(func: Callable, *args: Any, **kwargs: Any) -> Callable:
    """``KaggleApi.with_retry`` that adds no retry: the call itself."""
    return func


def dataset_state(api: Any, ref: str) -> dict[str, Any]:
    """``{"status": "ready" | "blobs_received" | "failed" | ..., "version": newest processed number or None}``."""
    try:
        data = json.loads(api.dataset_status(ref, format="json"))
    except TypeError:  # kaggle < 2.1.1: no format argument
        return _dataset_state_18(api, ref)
    return {"status": str(data.get("status", "")).lower(), "version": data.get("current_version_number") or None}


def _dataset_state_18(api: Any, ref: str) -> dict[str, Any]:
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    status = str(api.dataset_status(ref)).lower()
    request = ApiGetDatasetRequest()
    request.owner_slug, request.dataset_slug = ref.split("/")[:2]
    with api.build_kaggle_client() as kaggle:
        response = kaggle.datasets.dataset_api_client.get_dataset(request)
    return {"status": status, "version": response.current_version_number or None}


def list_files(api: Any, ref: str) -> list[tuple[str, int]]:
    """``[(name, size), ...]`` of every file of ``ref`` (``owner/slug`` or ``owner/slug/N``), all pages."""
    files: list[tuple[str, int]] = []
    token = None
    for _ in range(_MAX_PAGES):
        response = api.dataset_list_files(ref, page_token=token) if token else api.dataset_list_files(ref)
        if problem := getattr(response, "error_message", None):
            raise CallFailed(FailureKind.NOT_FOUND, f"{ref}: {problem}")
        files += [(str(item.name), int(item.total_bytes or 0)) for item in getattr(response, "files", None) or []]
        token = getattr(response, "next_page_token", None)
        if not token:
            return files
    raise CallFailed(FailureKind.ERROR, f"{ref}: more than {_MAX_PAGES} pages of files")


def download_file(api: Any, ref: str, name: str, folder: Path) -> Path:
    """Download the one file ``name`` of ``ref`` (``owner/slug/N``) into ``folder``; returns its path.

    The service wraps a large file in ``<name>.zip``: it is unpacked beside it and the zip removed, so the disk
    holds about the file twice at most for a moment (zip and file), once afterwards.
    """
    folder.mkdir(parents=True, exist_ok=True)
    api.dataset_download_file(ref, name, path=str(folder), force=True, quiet=True)
    target, wrapped = folder / name, folder / f"{name}.zip"
    if wrapped.is_file() and not target.is_file():
        from lightning_app.persistence.kaggle.archive import safe_extract

        safe_extract(wrapped, folder)
        wrapped.unlink()
    if not target.is_file():
        raise CallFailed(FailureKind.TRANSIENT, f"the download of {name} left no file")
    return target


def check_created(response: Any) -> None:
    """The create calls report some failures in the body (status "error"), not as HTTP errors."""
    get = response.get if isinstance(response, dict) else lambda name: getattr(response, name, None)
    status, problem = str(get("status") or ""), get("error")
    if problem or status.lower() not in ("", "ok"):
        raise (
            NameInUse(str(problem))
            if "already in use" in str(problem)
            else CallFailed(FailureKind.ERROR, str(problem or f"status {status!r}"))
        )


class NameInUse(CallFailed):
    """A create refused because the slug or the title is "already in use" (perhaps by this very dataset)."""

    def __init__(self, message: str) -> None:
        super().__init__(FailureKind.REFUSED, message)


def username(api: Any) -> str | None:
    """The user the client logged in as (a token names its user only at login)."""
    try:
        value = api.get_config_value("username")
    except Exception:  # noqa: BLE001 - an unknown client shape: callers still check access another way
        value = None
    return value if isinstance(value, str) and value else None
