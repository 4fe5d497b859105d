"""The operations a child process runs, one per process, in one table (`OPERATIONS`).

Each takes the logged-in ``KaggleApi`` and the arguments the parent wrote, and returns what goes into the result
file (a `PublishAnswer` for publish and settle); a failure is raised (a `CallFailed`, or the client's own exception,
classified by ``errors.py``). Arguments in brackets.

- ``publish`` [ref, folder, notes, files ({name: size}), polls, pause, delete_old_versions, measure,
  first_window]: create the private dataset, or add a version once the newest one has settled, unless the newest
  version already holds exactly ``files`` (a retry after a lost reply publishes nothing twice).
- ``settle`` [ref, before, files, polls, pause]: ask again about a version still processing.
- ``check`` [ref]: log in and look at the dataset (no upload); ``whoami`` []: the user a credential is.
- ``list`` [ref]: ``{"files": [[name, size], ...]}``.
- ``read_version`` [ref, version, texts, path]: the version's number (the newest processed one by default), its
  files, and the text of the small files named in ``texts`` that it holds.
- ``read_newest`` [items ([ref, name] pairs), path]: ``read_version`` of the newest version of each dataset, with
  the text of its file ``name``: ``{ref: {"version", "files", "texts"} or None (no such dataset, or no version)}``.
- ``download_file`` [ref, version, name, path, size]: one file of a version, unwrapped when it arrives zipped:
  ``{"path", "bytes", "wrapped", "peak"}`` (the most extra disk it held at once).
- ``quota`` []: the weekly GPU quota (``client.gpu_quota``).
- ``push_kernel`` [folder, quick_save, token, look_first]: push the kernel folder as a new version (run, or Quick
  Save); with ``look_first``, a retry after a lost reply, first look whether the newest version already holds
  ``token`` (an earlier attempt made it: a second push would queue a second run): ``{"version", "url",
  "invalid_dataset_sources", "error", "existing"}``; a refusal is ``error`` (Kaggle's text, HTTP 200), no version.
- ``kernel_state`` [ref, versions, token, back, quota]: ``{"exists": False}``, or the newest version's number, the
  status of the newest session (``status``, ``failure_message``), the status of each version in ``versions``, the
  newest of the last ``back`` versions whose source holds ``token`` (``token_version``; None when none does), and
  with ``quota`` the weekly GPU quota (``quota``, as ``quota`` answers; ``quota_unavailable``: why not).

A new version is not there at once: the create reply carries no version number, the version answers 404 for a
while, and ``current_version_number`` is the newest *processed* version (empty before the first one). So after a
create, `settle` polls a bounded number of times for a version numbered above the one before and for the end of
its processing: ``created`` (ready, with its file list), ``processing`` (not settled yet: the parent confirms it
later) or ``failed`` (processing failed after an ok create: over the private storage quota, or a processing error).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle import client
from lightning_app.persistence.kaggle.errors import http_status
from lightning_app.persistence.kaggle.outcomes import (
    CallFailed,
    FailureKind,
    Operation,
    PublishAnswer,
    PublishOutcome,
)

#: Statuses after which a new version may be created ("failed" and "deleted" versions block nothing).
SETTLED = ("ready", "failed", "deleted")
#: The most versions listed to add up a dataset's size (one request each, inside a bounded child).
_MAX_MEASURED = 20
#: The most bytes of one small file a ``read_version`` returns as text (a manifest is a few kB).
_SMALL_FILE_LIMIT = 4 << 20


def _missing(error: BaseException) -> bool:
    return http_status(error) == 404 or (isinstance(error, CallFailed) and error.kind is FailureKind.NOT_FOUND)


def publish(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    ref = args["ref"]
    try:
        state = client.dataset_state(api, ref)
    except Exception as error:
        if http_status(error) != 404:
            raise
        state = _create(api, ref, args["folder"])
        if state is None:
            return _settle_after_create(api, ref, 0, args, new_dataset=True)
    if state["status"] not in SETTLED:
        return PublishAnswer(PublishOutcome.BUSY, state["status"]).to_json()
    if state["status"] == "ready":
        newest = client.list_files(api, f"{ref}/{state['version']}" if state["version"] else ref)
        if dict(newest) == args["files"]:
            # An earlier attempt published these files and lost the reply: no duplicate version.
            return PublishAnswer(PublishOutcome.EXISTING, "ready", state["version"], tuple(newest)).to_json()
    try:
        response = api.dataset_create_version(
            folder=args["folder"],
            version_notes=args["notes"],
            quiet=True,
            delete_old_versions=bool(args.get("delete_old_versions")),
            dir_mode="skip",
        )
    except Exception as error:
        if http_status(error) == 403 and client.dataset_state(api, ref)["status"] not in SETTLED:
            return PublishAnswer(PublishOutcome.BUSY, "processing").to_json()  # a first version still processing
        if http_status(error) == 403 and args.get("first_window") and (state["version"] or 0) <= 1:
            # A dataset this run created moments ago: its first version may still be processing although the
            # status says otherwise; the parent retries a bounded number of times before calling it a refusal.
            status = "first version still processing (403)"
            return PublishAnswer(PublishOutcome.BUSY, status, first_version_refusal=True).to_json()
        raise
    client.check_created(response)
    return _settle_after_create(api, ref, state["version"] or 0, args)


def _create(api: Any, ref: str, folder: str) -> dict[str, Any] | None:
    """Create the dataset (None), or its state when the name is "in use" by this very dataset (an earlier attempt
    made it after all). A title used by another of the owner's datasets, or a slug kept by a deleted one, is
    refused for good."""
    try:
        client.check_created(api.dataset_create_new(folder=folder, public=False, quiet=True, dir_mode="skip"))
        return None
    except client.NameInUse as in_use:
        try:
            return client.dataset_state(api, ref)  # it exists and we can see it (it is private): ours
        except Exception as error:
            if http_status(error) != 404:
                raise
        fix = "choose another name with --sync.dataset OWNER/SLUG or another title with --sync.title"
        raise CallFailed(FailureKind.REFUSED, f"Kaggle will not create {ref}: {in_use}; {fix}") from None


def _settle_after_create(api: Any, ref: str, before: int, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    answer = _settle(api, ref, before, int(args.get("polls", 5)), float(args.get("pause", 1.0)))
    if answer.outcome is PublishOutcome.CREATED and args.get("measure") and answer.version:
        answer = _with(answer, **_measure(api, ref, answer.version))
    return _with(answer, **extra).to_json()


def _with(answer: PublishAnswer, **changes: Any) -> PublishAnswer:
    return PublishAnswer(**{**answer.__dict__, **changes})


def _settle(api: Any, ref: str, before: int, polls: int, pause: float) -> PublishAnswer:
    """Poll up to ``polls`` times, ``pause`` s apart, for the version after number ``before`` to settle."""
    status = "not visible yet"
    for attempt in range(max(1, polls)):
        if attempt:
            time.sleep(pause)
        try:
            state = client.dataset_state(api, ref)
        except Exception as error:
            if not _missing(error):
                raise
            continue  # the dataset itself is not visible yet
        status, number = state["status"], state["version"]
        if status == "failed":
            return PublishAnswer(PublishOutcome.FAILED, status, before=before, **_measure(api, ref, number or 0))
        if status != "ready" or number is None or number <= before:
            continue
        try:
            files = tuple(client.list_files(api, f"{ref}/{number}"))
        except Exception as error:
            if not _missing(error):
                raise
            continue
        return PublishAnswer(PublishOutcome.CREATED, status, number, files, before)
    return PublishAnswer(PublishOutcome.PROCESSING, status, before=before)


def _measure(api: Any, ref: str, newest: int) -> dict[str, int]:
    """``stored_bytes`` and ``stored_versions``: the sizes of the newest versions up to ``newest`` that still
    answer (at most `_MAX_MEASURED` of them); empty when a lookup fails, since the version itself is made."""
    total = count = 0
    for number in range(max(1, newest - _MAX_MEASURED + 1), newest + 1):
        try:
            files = client.list_files(api, f"{ref}/{number}")
        except Exception as error:  # noqa: BLE001 - a size is a nicety: never fail a publish over it
            if _missing(error):
                continue  # deleted (delete_old_versions) or never processed
            return {}
        total += sum(size for _name, size in files)
        count += 1
    return {"stored_bytes": total, "stored_versions": count}


def settle(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    answer = _settle(api, args["ref"], int(args["before"]), int(args["polls"]), float(args["pause"]))
    return answer.to_json()


def check(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    ref = args["ref"]
    owner = ref.split("/")[0]
    user = client.username(api)
    if user and user.lower() != owner.lower():
        raise CallFailed(FailureKind.REFUSED, f"{ref} belongs to {owner}, but the credentials are {user}'s")
    try:
        state = client.dataset_state(api, ref)
    except Exception as error:
        if http_status(error) == 404:
            return {"found": f"{ref} does not exist yet; it will be created"}
        raise
    return {"found": f"{ref} exists ({state['status']})"}


def whoami(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"username": client.username(api)}


def list_version(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    return {"files": client.list_files(api, args["ref"])}


def read_version(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The version's number (the newest processed one when none is given), its files, and the text of the small
    files named in ``texts`` that it holds: one process, one login, for what a restore reads first."""
    ref, number = args["ref"], args.get("version")
    if number is None:
        number = client.dataset_state(api, ref)["version"]
        if number is None:
            raise CallFailed(FailureKind.NOT_FOUND, f"{ref}: no version has finished processing yet")
    try:
        files = client.list_files(api, f"{ref}/{number}")
    except Exception as error:
        if args.get("version") is not None or not _missing(error):
            raise
        files = client.list_files(api, ref)  # the newest version, not yet visible by its number
    texts = {}
    work = Path(args["path"])
    for name in args.get("texts") or ():
        size = dict(files).get(name)
        if size is not None and size <= _SMALL_FILE_LIMIT:
            texts[name] = Path(client.download_file(api, f"{ref}/{number}", name, work, size)["path"]).read_text()
    return {"version": number, "files": files, "texts": texts}


def read_newest(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ref, name in args["items"]:
        try:
            found[ref] = read_version(api, {"ref": ref, "version": None, "texts": [name], "path": args["path"]})
        except Exception as error:
            if not _missing(error):
                raise
            found[ref] = None
    return found


def download_file(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    ref = args["ref"] if args.get("version") is None else f"{args['ref']}/{int(args['version'])}"
    return client.download_file(api, ref, str(args["name"]), Path(args["path"]), args.get("size"))


def quota(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    return client.gpu_quota(api)


def push_kernel(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    folder = Path(args["folder"])
    ref = str(json.loads((folder / client.KERNEL_METADATA_NAME).read_text())["id"])
    token = args.get("token")
    if args.get("look_first") and token:
        found = _version_holding(api, ref, str(token), back=1)
        if found is not None:
            return {"version": found, "url": "", "invalid_dataset_sources": [], "error": "", "existing": True}
    try:
        answer = client.save_kernel(api, folder, bool(args.get("quick_save")))
    except Exception as error:
        if http_status(error) == 403:  # a token that may not write (a notebook's own), or another user's kernel
            raise CallFailed(FailureKind.REFUSED, f"Kaggle refused permission to push {ref} ({error})", 403) from None
        raise
    return {**answer, "existing": False}


def kernel_state(api: Any, args: dict[str, Any]) -> dict[str, Any]:
    ref = args["ref"]
    try:
        newest = client.get_kernel(api, ref)
    except Exception as error:
        if http_status(error) == 404:
            return {"exists": False}
        if http_status(error) == 403:
            why = f"{ref}: Kaggle will not show this kernel ({error}): another user's kernel, or a private one"
            raise CallFailed(FailureKind.REFUSED, why) from None
        raise
    session = client.kernel_status(api, ref)
    versions = {}
    for number in args.get("versions") or ():
        try:
            answer = client.kernel_status(api, ref, int(number))
        except Exception as error:
            if not _missing(error):
                raise
            answer = {"status": "MISSING", "failure_message": ""}
        versions[str(int(number))] = [answer["status"], answer["failure_message"]]
    token = args.get("token")
    found = _version_holding(api, ref, str(token), int(args.get("back", 5)), newest) if token else None
    state = {
        "exists": True,
        "current_version": newest["current_version"],
        "status": session["status"],
        "failure_message": session["failure_message"],
        "versions": versions,
        "token_version": found,
    }
    if args.get("quota"):
        try:
            state["quota"] = client.gpu_quota(api)
        except CallFailed as failure:
            if failure.kind is not FailureKind.UNAVAILABLE:
                raise
            state["quota_unavailable"] = str(failure)
    return state


def _version_holding(api: Any, ref: str, token: str, back: int, newest: dict[str, Any] | None = None) -> int | None:
    """The newest of the last ``back`` versions of ``ref`` whose source holds ``token``; None if none does (or the
    kernel does not exist)."""
    try:
        newest = newest or client.get_kernel(api, ref)
    except Exception as error:
        if _missing(error):
            return None
        raise
    current = newest["current_version"]
    if token in newest["source"]:
        return current
    for number in range(int(current or 0) - 1, max(0, int(current or 0) - back), -1):
        try:
            if token in client.get_kernel(api, ref, number)["source"]:
                return number
        except Exception as error:
            if not _missing(error):
                raise
    return None


OPERATIONS: dict[Operation, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    Operation.PUBLISH: publish,
    Operation.SETTLE: settle,
    Operation.CHECK: check,
    Operation.WHOAMI: whoami,
    Operation.LIST: list_version,
    Operation.READ_VERSION: read_version,
    Operation.READ_NEWEST: read_newest,
    Operation.DOWNLOAD_FILE: download_file,
    Operation.QUOTA: quota,
    Operation.PUSH_KERNEL: push_kernel,
    Operation.KERNEL_STATE: kernel_state,
}
