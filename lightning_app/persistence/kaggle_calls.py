"""Child-process entry point of ``KaggleDatasetStore``: one ``KaggleApi`` operation per process.

The ``kaggle`` client has no timeouts, and a thread stuck in it cannot be cancelled (a late
CreateDatasetVersion could even publish after a newer version). So the parent runs every operation as::

    python -m lightning_app.persistence.kaggle_calls <op> <args.json> <result.json>

and kills the process when its time is up. The result file holds ``{"ok": true, "result": ...}`` or
``{"ok": false, "kind", "message", "status", "retry_after"}`` (``kaggle_errors.py``); the client's stdout
chatter ("Dataset URL: ...") goes nowhere. ``kaggle`` is imported here only, lazily.

Operations (``args`` keys in brackets):

- ``publish`` [ref, folder, notes, files ({name: size}), polls, pause, delete_old_versions, measure,
  first_window]: create the private dataset, or add a version. Answers ``{"outcome": "busy", "status"}`` while
  the newest version is processing (nothing created), ``{"outcome": "existing", "version", "files"}`` when the
  newest version already holds exactly ``files``, or what ``kaggle_versions.settle`` says of the new version
  (created, pending or failed).
- ``settle`` [ref, before, files, polls, pause]: ask again about a pending version; ``check`` [ref]: log in and
  look at the dataset, no upload; ``whoami`` []: the user the credentials log in as (``kaggle_versions.py``).
- ``list`` [ref (owner/slug or owner/slug/N)]: ``{"files": [[name, size], ...]}``, all pages.
- ``download`` [ref, path]: ``{"zip": path/<slug>.zip}``.
- ``download_file`` [ref, name, path, size]: one file, unwrapped, in ``path`` (``kaggle_files.py``).
- ``quota`` []: the weekly GPU quota (``kaggle_quota.py``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle_errors import Failure, failure_outcome, http_status, login_failure
from lightning_app.persistence.kaggle_files import op_download_file
from lightning_app.persistence.kaggle_quota import op_quota

_MAX_PAGES = 1000
#: Statuses after which a new version may be created ("failed"/"deleted" versions block nothing; kaggle 1.6
#: says "error" for a failed one).
SETTLED = ("ready", "failed", "deleted", "error")


def connect() -> Any:
    """The authenticated ``KaggleApi``, with the client's own retry loop turned off."""
    try:
        from kaggle import api  # authenticates at import: 1.6 raises OSError, 2.x prints help and carries on
    except ImportError as error:
        raise Failure("error", f"the kaggle package is not installed ({error})") from error
    except (OSError, SystemExit) as error:
        raise login_failure(error) from error
    try:
        # Again when the import did not log in, so that 2.x reports missing credentials (it calls exit(1)); not
        # after a token login: 1.8 then removes KAGGLE_API_TOKEN from os.environ and a second login finds nothing.
        if not (getattr(api, "config_values", None) or {}).get("username"):
            api.authenticate()
    except (OSError, SystemExit) as error:
        raise login_failure(error) from error
    if hasattr(api, "with_retry"):
        # One retry policy (retry.py, in the parent): the client's own loop would retry inside a bounded call, and
        # a create retried after a lost reply makes a second version; the parent checks what the server has first.
        api.with_retry = _one_attempt
    return api


def _one_attempt(func: Callable, *args: Any, **kwargs: Any) -> Callable:
    """``KaggleApi.with_retry`` that adds no retry: the call itself."""
    return func


def _status(api: Any, ref: str, fields: str = "json") -> dict[str, Any]:
    try:
        data = json.loads(api.dataset_status(ref, format=fields))
    except TypeError:  # kaggle < 2.1.1: no format argument (client_compat makes the same requests)
        from lightning_app.persistence.client_compat import dataset_state

        return dataset_state(api, ref)
    return {"status": str(data.get("status", "")).lower(), "version": data.get("current_version_number") or None}


def list_all(api: Any, ref: str) -> list[list[Any]]:
    """``[[name, size], ...]`` of every file of ``ref``, following page tokens (kaggle 1.6 and 2.x shapes)."""
    files: list[list[Any]] = []
    token = None
    for _ in range(_MAX_PAGES):
        response = api.dataset_list_files(ref, page_token=token) if token else api.dataset_list_files(ref)
        problem = getattr(response, "error_message", None) or getattr(response, "errorMessage", None)
        if problem:
            raise Failure("not_found", f"{ref}: {problem}")
        for item in getattr(response, "files", None) or []:
            size = getattr(item, "total_bytes", None)
            size = getattr(item, "totalBytes", None) if size is None else size
            files.append([str(item.name), int(size or 0)])
        token = getattr(response, "next_page_token", None) or getattr(response, "nextPageToken", None)
        if not token:
            return files
    raise Failure("error", f"{ref}: more than {_MAX_PAGES} pages of files")


def _check_created(response: Any) -> None:
    """The create calls report some failures in the body (status "error"), not as HTTP errors."""
    get = response.get if isinstance(response, dict) else lambda name: getattr(response, name, None)
    status, problem = str(get("status") or ""), get("error")
    if problem or status.lower() not in ("", "ok"):
        message = str(problem or f"status {status!r}")
        raise Failure("in_use" if "already in use" in message else "error", message)


def _create(api: Any, ref: str, folder: str) -> dict[str, Any] | None:
    """Create the dataset (None), or its status when the name is "in use" by this very dataset (an earlier
    attempt made it after all).

    A title used by another of the owner's datasets, or a slug kept by a deleted one, is refused for good.
    """
    try:
        _check_created(api.dataset_create_new(folder=folder, public=False, quiet=True, dir_mode="skip"))
        return None
    except Failure as failure:
        if failure.kind != "in_use":
            raise
        try:
            return _status(api, ref)  # it exists and we can see it (it is private): ours, so add a version
        except Exception as error:
            if http_status(error) != 404:
                raise
        fix = "choose another name with --sync.dataset OWNER/SLUG or another title with --sync.title"
        raise Failure("refused", f"Kaggle will not create {ref}: {failure}; {fix}") from None


def _settle(api: Any, ref: str, before: int, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from lightning_app.persistence.kaggle_versions import after_create

    return {**after_create(api, ref, before, args), **extra}


def op_publish(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Create the dataset, or add a version once the newest one is settled, unless it already holds the files."""
    ref = args["ref"]
    try:
        state = _status(api, ref)
    except Exception as error:
        if http_status(error) != 404:
            raise
        state = _create(api, ref, args["folder"])
        if state is None:
            return _settle(api, ref, 0, args, new_dataset=True)
    if state["status"] not in SETTLED:
        return {"outcome": "busy", "status": state["status"]}
    if state["status"] == "ready":
        newest = list_all(api, f"{ref}/{state['version']}" if state["version"] else ref)
        if dict(map(tuple, newest)) == args["files"]:
            # An earlier attempt published these files and lost the reply: no duplicate version.
            return {"outcome": "existing", "version": state["version"], "files": newest}
    try:
        response = api.dataset_create_version(
            folder=args["folder"],
            version_notes=args["notes"],
            quiet=True,
            delete_old_versions=bool(args.get("delete_old_versions")),
            dir_mode="skip",
        )
    except Exception as error:
        if http_status(error) == 403 and _status(api, ref)["status"] not in SETTLED:
            return {"outcome": "busy", "status": "processing"}  # the 403 of a first version still processing
        if http_status(error) == 403 and args.get("first_window") and (state["version"] or 0) <= 1:
            # A dataset this run created moments ago: its first version may still be processing although the
            # status says otherwise; the parent retries a bounded number of times before calling it a refusal.
            return {"outcome": "busy", "status": "first version still processing (403)", "refused": 1}
        raise
    _check_created(response)
    return _settle(api, ref, state["version"] or 0, args)


def op_list(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"files": list_all(api, args["ref"])}


def op_download(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    path = Path(args["path"])
    api.dataset_download_files(args["ref"], path=str(path), unzip=False, force=True, quiet=True)
    expected = path / (args["ref"].split("/")[1] + ".zip")
    if not expected.is_file():
        raise Failure("transient", f"the download left no {expected.name}")
    return {"zip": str(expected)}


OPS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "publish": op_publish,
    "list": op_list,
    "download": op_download,
    "download_file": op_download_file,
    "quota": op_quota,
}
#: Operations of ``kaggle_versions`` (imported when used: it imports this module).
VERSION_OPS = ("settle", "check", "whoami")


def run(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Do one operation and return what goes into the result file (never raises)."""
    api = None
    try:
        if op not in (*OPS, *VERSION_OPS):
            raise Failure("error", f"unknown operation {op!r}; expected one of {sorted([*OPS, *VERSION_OPS])}")
        if op in OPS:
            handler = OPS[op]
        else:
            from lightning_app.persistence import kaggle_versions

            handler = getattr(kaggle_versions, f"op_{op}")
        api = connect()
        return {"ok": True, "result": handler(api, args)}
    except BaseException as error:  # noqa: BLE001 - SystemExit from the client is a failure like any other
        if isinstance(error, KeyboardInterrupt):
            raise
        return failure_outcome(error, api)


def main(argv: list[str] | None = None) -> int:
    op, args_path, result_path = (sys.argv[1:] if argv is None else argv)[:3]
    outcome = run(op, json.loads(Path(args_path).read_text()))
    tmp = Path(f"{result_path}.tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, result_path)  # the parent sees a whole result or none
    return 0


#: An upload yields the CPU to training (its hashing and TLS compete with the training threads otherwise).
UPLOAD_NICENESS = 10

if __name__ == "__main__":
    os.nice(UPLOAD_NICENESS)
    # Run the module under its own name, so that kaggle_versions (which imports it) shares its classes.
    from lightning_app.persistence.kaggle_calls import main as module_main

    sys.exit(module_main())
