"""Child-process side of a new version's life after the create call said ok (``kaggle_calls`` runs these).

A new version is not there at once: the create reply carries no version number, the version answers 404 for a
while, and ``current_version_number`` is the newest *processed* version (empty before the first one). So after
a create, `settle` polls a bounded number of times for a version numbered above the one before and for the
end of its processing:

- ``{"outcome": "created", "version", "files"}``: ready, with its file list;
- ``{"outcome": "pending", "status", "before"}``: not settled yet (the parent confirms it later, ``op_settle``);
- ``{"outcome": "failed", "status", "stored_bytes", "stored_versions"}``: processing failed after an ok create
  (over the private storage quota, or a processing error). kaggle 1.6 says ``error`` where 2.x says ``failed``.
"""

from __future__ import annotations

import time
from typing import Any

from lightning_app.persistence import kaggle_calls as calls
from lightning_app.persistence.kaggle_errors import Failure, http_status

FAILED = ("failed", "error")
#: The most versions listed to add up a dataset's size (one request each, inside a bounded child).
_MAX_MEASURED = 20


def _missing(error: BaseException) -> bool:
    return http_status(error) == 404 or (isinstance(error, Failure) and error.kind == "not_found")


def settle(api: Any, ref: str, before: int, files: dict[str, int], polls: int, pause: float) -> dict[str, Any]:
    """Poll up to ``polls`` times, ``pause`` s apart, for the version after number ``before`` to settle."""
    status = "not visible yet"
    for attempt in range(max(1, polls)):
        if attempt:
            time.sleep(pause)
        try:
            state = calls._status(api, ref)
        except Exception as error:
            if not _missing(error):
                raise
            continue  # the dataset itself is not visible yet
        status, number = state["status"], state["version"]
        if status in FAILED:
            return {"outcome": "failed", "status": status, **measure(api, ref, number or 0)}
        if status != "ready":
            continue
        if number is None:  # kaggle < 2.1 cannot say which version is current: compare the newest one's files
            newest = calls.list_all(api, ref)
            if dict(map(tuple, newest)) == files:
                return {"outcome": "created", "version": None, "files": newest}
            continue
        if number > before:
            try:
                return {"outcome": "created", "version": number, "files": calls.list_all(api, f"{ref}/{number}")}
            except Exception as error:
                if not _missing(error):
                    raise
    return {"outcome": "pending", "status": status, "before": before}


def after_create(api: Any, ref: str, before: int, args: dict[str, Any]) -> dict[str, Any]:
    """`settle` after a create call (publish's ``polls``, ``pause``), measured when ``args["measure"]``."""
    result = settle(api, ref, before, args["files"], int(args.get("polls", 5)), float(args.get("pause", 1.0)))
    if result["outcome"] == "created" and args.get("measure") and result["version"]:
        result.update(measure(api, ref, result["version"]))
    return result


def measure(api: Any, ref: str, newest: int) -> dict[str, int]:
    """``stored_bytes`` and ``stored_versions``: the sizes of the newest versions up to ``newest`` that still
    answer (at most `_MAX_MEASURED` of them); empty when a lookup fails, since the version itself is made."""
    total = count = 0
    for number in range(max(1, newest - _MAX_MEASURED + 1), newest + 1):
        try:
            files = calls.list_all(api, f"{ref}/{number}")
        except Exception as error:  # noqa: BLE001 - a size is a nicety: never fail a publish over it
            if _missing(error):
                continue  # deleted (delete_old_versions) or never processed
            return {}
        total += sum(size for _name, size in files)
        count += 1
    return {"stored_bytes": total, "stored_versions": count}


def op_settle(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """[ref, before, files, polls, pause]: ask again about a version left ``pending``."""
    return settle(api, args["ref"], int(args["before"]), args["files"], int(args["polls"]), float(args["pause"]))


def op_check(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """[ref]: the credentials work (``connect`` did log in) and ``ref`` can be created or written; no upload."""
    ref = args["ref"]
    owner = ref.split("/")[0]
    user = _username(api)
    if user and user.lower() != owner.lower():
        raise Failure("refused", f"{ref} belongs to {owner}, but the credentials are {user}'s")
    try:
        state = calls._status(api, ref)
    except Exception as error:
        if http_status(error) == 404:
            return {"found": f"{ref} does not exist yet; it will be created"}
        raise
    return {"found": f"{ref} exists ({state['status']})"}


def op_whoami(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """[]: the user the credentials log in as (an access token names its user only at login)."""
    return {"username": _username(api)}


def _username(api: Any) -> str | None:
    getter = getattr(api, "get_config_value", None)
    try:
        value = getter("username") if getter is not None else None
    except Exception:  # noqa: BLE001 - an unknown client shape: the status call below still checks access
        value = None
    return value if isinstance(value, str) and value else None
