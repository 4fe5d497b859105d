"""The ``kaggle`` client inside the child process: logging in, and every difference between the client
generations this project supports (1.8.x, which Kaggle's notebook image pins, and 2.x), in one place.

- ``dataset_status(ref, format=...)`` (status and ``current_version_number`` in one call) exists from 2.1.1; on
  1.8 the same two kagglesdk requests are made here (GetDatasetStatus, GetDataset).
- One file of a version arrives wrapped in a zip when it is large: 2.2.5 can unwrap it, 1.8 cannot
  (`download_file` does it for both).
- The weekly GPU quota: ``quota_view()`` from 2.2.1; on 1.8 the same request through kagglesdk >= 0.1.28.
- Listings come back as ``files[i].name`` / ``total_bytes`` with ``next_page_token`` on every supported client.
- Kernels: 1.8's ``kernels_push`` sends neither ``machine_shape`` nor ``kernel_execution_type`` (Quick Save), and
  2.2.5's ``kernels_status`` turns a 401/403 into ``ValueError``; so every kernel call is made here with kagglesdk's
  own request types through ``api.build_kaggle_client()``, the same on both lines (kagglesdk >= 0.1.14, the oldest
  1.8.3 accepts, has every field used). A refused push is an HTTP 200 whose body holds ``error``.
- The client's own retry loop (``with_retry``) is switched off: each call is one bounded attempt, and the parent's
  retry policy (``retry.py``) decides whether another follows.

``kaggle`` is imported here only, lazily: importing it logs in.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

from lightning_app.persistence.kaggle.errors import http_status, login_failure
from lightning_app.persistence.kaggle.outcomes import CallFailed, FailureKind

_MAX_PAGES = 1000
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: A marker kaggle 2.2.5 keeps beside a download in progress (it resumes from it); never the file itself.
_PARTIAL_SUFFIX = ".kaggle-partial"


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


def download_file(api: Any, ref: str, name: str, folder: Path, size: int | None = None) -> dict[str, Any]:
    """Download the one file ``name`` of ``ref`` (``owner/slug`` or ``owner/slug/N``) into ``folder``:
    ``{"path", "bytes", "wrapped", "peak"}``.

    The service answers with a 302 to a storage URL, and wraps a large file in ``<name>.zip`` holding just it (the
    size above which it does is not published). kaggle 2.2.5 can unwrap it, 1.8 cannot: it is unwrapped here for
    both. The file is downloaded into a scratch folder inside ``folder`` (never ``/tmp``: on Kaggle another,
    smaller disk) and moved into place with ``os.replace``; the extra disk at the peak is the file, or for a
    wrapped one the zip plus the file. Free space is checked first (kaggle 2.2.5 retries an out-of-space write for
    about a minute before it gives up).
    """
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise CallFailed(FailureKind.ERROR, f"{name!r} is not the name of a file directly in a dataset version")
    folder.mkdir(parents=True, exist_ok=True)
    if size is not None:
        _need_room(folder, int(size), name)
    work = Path(tempfile.mkdtemp(prefix=".kaggle-file-", dir=folder))
    try:
        try:  # force: never resume onto, nor keep, a file left by an earlier attempt
            api.dataset_download_file(ref, name, path=str(work), force=True, quiet=True)
        except OSError as error:
            if getattr(error, "errno", None) in _NO_SPACE:
                raise CallFailed(FailureKind.DISK_FULL, f"no space left in {folder} for {name} ({error})") from error
            raise
        arrived, zip_bytes = work / name, 0
        wrapped = not arrived.is_file()
        if wrapped:
            arrived = work / f"{name}.zip"
            if not arrived.is_file():
                left = sorted(p.name for p in work.iterdir() if not p.name.endswith(_PARTIAL_SUFFIX))
                raise CallFailed(FailureKind.TRANSIENT, f"the download of {name} left {left or 'nothing'}")
            zip_bytes = arrived.stat().st_size
            arrived = _unwrap(arrived, work / f"{name}.part", folder, name)
        target = folder / name
        os.replace(arrived, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = target.stat().st_size
    return {"path": str(target), "bytes": size, "wrapped": wrapped, "peak": size + zip_bytes}


def _unwrap(archive: Path, part: Path, folder: Path, name: str) -> Path:
    """The one file inside ``archive`` written to ``part`` (on the same disk); the zip is removed."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise CallFailed(
                    FailureKind.ERROR, f"{name} arrived as {archive.name} holding {len(members)} files, not one"
                )
            _need_room(folder, members[0].file_size, name)
            try:
                with zipped.open(members[0]) as source, open(part, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except OSError as error:
                if getattr(error, "errno", None) in _NO_SPACE:
                    raise CallFailed(
                        FailureKind.DISK_FULL, f"no space left in {folder} to unwrap {name} ({error})"
                    ) from error
                raise
    except zipfile.BadZipFile as error:  # cut off or damaged on the way: another attempt can succeed
        raise CallFailed(FailureKind.TRANSIENT, f"{name} arrived as a damaged {archive.name} ({error})") from error
    archive.unlink()
    return part


def _need_room(folder: Path, size: int, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < size:
        need = f"{free / 1e6:.1f} MB free, it needs {size / 1e6:.1f} MB"
        raise CallFailed(FailureKind.DISK_FULL, f"no space left in {folder} for {name}: {need}")


def gpu_quota(api: Any) -> dict[str, Any]:
    """The weekly GPU quota (GetAcceleratorQuotaStatistics): ``{used_seconds, allowed_seconds, reserved_seconds,
    refreshes_at (ISO, UTC, or None), source}``. kaggle >= 2.2.1 asks with ``quota_view()``; kaggle 1.8 has no such
    call, but its kagglesdk makes the same request from 0.1.28 on. An `Operation.QUOTA` failure of kind
    ``unavailable`` when this client cannot ask, or the answer holds no GPU quota."""
    try:
        response, source = _ask(api)
    except Exception as error:
        if http_status(error) == 404:  # a service that does not know the request
            unknown = f"Kaggle does not answer the quota request ({error})"
            raise CallFailed(FailureKind.UNAVAILABLE, unknown) from error
        raise
    gpu = getattr(response, "gpu_quota", None)
    allowed = _seconds(getattr(gpu, "total_time_allowed", None))
    if gpu is None or allowed is None:
        raise CallFailed(FailureKind.UNAVAILABLE, "Kaggle's answer holds no GPU quota")
    refresh = getattr(response, "quota_refresh_time", None)
    if refresh is not None:  # kagglesdk parses the UTC timestamp without a time zone
        refresh = refresh.replace(tzinfo=timezone.utc) if refresh.utcoffset() is None else refresh
        refresh = refresh.astimezone(timezone.utc).isoformat()
    return {
        "used_seconds": _seconds(getattr(gpu, "time_used", None)) or 0.0,  # a zero Duration arrives as None
        "allowed_seconds": allowed,
        "reserved_seconds": _seconds(getattr(gpu, "time_reserved", None)) or 0.0,
        "refreshes_at": refresh,
        "source": source,
    }


def _ask(api: Any) -> tuple[Any, str]:
    """The GetAcceleratorQuotaStatistics response, and which way it was asked."""
    if hasattr(api, "quota_view"):  # kaggle >= 2.2.1
        return api.quota_view(), "quota_view"
    try:
        from kagglesdk.kernels.types.kernels_api_service import ApiGetAcceleratorQuotaStatisticsRequest
    except ImportError:
        raise _cannot_tell() from None
    with api.build_kaggle_client() as kaggle:
        kernels = kaggle.kernels.kernels_api_client
        if not hasattr(kernels, "get_accelerator_quota_statistics"):
            raise _cannot_tell()
        return kernels.get_accelerator_quota_statistics(ApiGetAcceleratorQuotaStatisticsRequest()), "kagglesdk"


def _cannot_tell() -> CallFailed:
    why = f"{_client()} cannot tell the GPU quota (kaggle >= 2.2.1 or kagglesdk >= 0.1.28 can)"
    return CallFailed(FailureKind.UNAVAILABLE, why)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _client() -> str:
    """``kaggle X / kagglesdk Y`` as installed."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"no {name}"

    return f"{installed('kaggle')} with {installed('kagglesdk')}"


# -- kernels --------------------------------------------------------------------------------------------------------

#: What a kernel folder describes itself with (kaggle's own format, read by ``kaggle kernels push`` too).
KERNEL_METADATA_NAME = "kernel-metadata.json"


def save_kernel(api: Any, folder: Path, quick_save: bool) -> dict[str, Any]:
    """Push the kernel in ``folder`` (``kernel-metadata.json`` and its code file) as a new version: run it, or with
    ``quick_save`` only save it. ``{"version", "url", "invalid_dataset_sources", "error"}``: a refusal (the weekly
    quota, the session limit, a slug the service will not take) comes back as HTTP 200 with Kaggle's text in
    ``error`` and no version."""
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest
    from kagglesdk.kernels.types.kernels_enums import KernelExecutionType

    metadata = json.loads((folder / KERNEL_METADATA_NAME).read_text())
    request = ApiSaveKernelRequest()
    request.slug = str(metadata["id"])
    request.new_title = str(metadata.get("title") or metadata["id"].split("/")[1])
    request.text = (folder / metadata["code_file"]).read_text()
    request.language = str(metadata.get("language") or "python")
    request.kernel_type = str(metadata.get("kernel_type") or "script")
    request.is_private = _flag(metadata.get("is_private", True))
    request.enable_gpu = _flag(metadata.get("enable_gpu", False))
    request.enable_internet = _flag(metadata.get("enable_internet", True))
    request.dataset_data_sources = [str(ref) for ref in metadata.get("dataset_sources") or []]
    if metadata.get("machine_shape"):
        request.machine_shape = str(metadata["machine_shape"])
    if quick_save:
        request.kernel_execution_type = KernelExecutionType.QUICK_SAVE
    with api.build_kaggle_client() as kaggle:
        response = kaggle.kernels.kernels_api_client.save_kernel(request)
    refusal = str(getattr(response, "error", None) or "")
    version = getattr(response, "version_number", None)
    if not refusal and not version:
        raise CallFailed(FailureKind.ERROR, f"Kaggle answered the push of {request.slug} with no version number")
    return {
        "version": int(version) if version and not refusal else None,
        "url": str(getattr(response, "url", "") or ""),
        "invalid_dataset_sources": [str(ref) for ref in getattr(response, "invalid_dataset_sources", None) or []],
        "error": refusal,
    }


def get_kernel(api: Any, ref: str, version: int | None = None) -> dict[str, Any]:
    """GetKernel: ``{"current_version", "source"}`` of the newest version (or of ``version``). An unknown kernel of
    the caller is a 404, another user's private or missing one a 403 (raised as the client raises them)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name, request.kernel_slug = ref.split("/")
    if version is not None:
        request.version_label = f"v{int(version)}"  # "N" alone is not found on the real service
    with api.build_kaggle_client() as kaggle:
        response = kaggle.kernels.kernels_api_client.get_kernel(request)
    metadata, blob = getattr(response, "metadata", None), getattr(response, "blob", None)
    current = getattr(metadata, "current_version_number", None)
    return {"current_version": int(current) if current else None, "source": str(getattr(blob, "source", "") or "")}


def kernel_status(api: Any, ref: str, version: int | None = None) -> dict[str, Any]:
    """GetKernelSessionStatus: ``{"status": "RUNNING" | ..., "failure_message"}`` of the newest version that was to
    run (or of ``version``). A reply without a status reads as ``QUEUED`` (proto3's default)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name, request.kernel_slug = ref.split("/")
    if version is not None:
        request.version_label = f"v{int(version)}"
    with api.build_kaggle_client() as kaggle:
        response = kaggle.kernels.kernels_api_client.get_kernel_session_status(request)
    status = getattr(response, "status", None)
    name = getattr(status, "name", None) or (str(status) if status is not None else "QUEUED")
    return {"status": name, "failure_message": str(getattr(response, "failure_message", "") or "")}


def _flag(value: Any) -> bool:
    """A metadata flag: a JSON boolean, or the ``"true"``/``"false"`` strings kaggle's own examples use."""
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


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
