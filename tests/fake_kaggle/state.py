"""What the fake Kaggle server stores for datasets, and the RPCs that read and change it (no HTTP in here).

Each RPC takes the authenticated user (None when anonymous) and the camelCase JSON body that kagglesdk sends,
and returns a ``Reply``. Everything runs under ``FakeState.lock``. Kernels (SaveKernel, the status and quota
calls) live in ``kernels.py``, what the download URLs serve in ``downloads.py``; ``FakeState.rpc`` dispatches
to the kernel RPCs too.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fake_kaggle import downloads
from tests.fake_kaggle.kernels import KernelsState
from tests.fake_kaggle.replies import Reply, error, iso

#: What GetDatasetStatus answers for a version still processing (the client lower-cases it: "blobs_received").
PENDING_STATUS = "BLOBS_RECEIVED"
READY_STATUS = "READY"
FAILED_STATUS = "FAILED"


@dataclass
class Blob:
    """One StartBlobUpload: the bytes arrive with a PUT to ``createUrl``."""

    token: str
    name: str
    content_length: int
    data: bytes | None = None
    bytes_received: int = 0  # every PUT counted, retries included


@dataclass
class Version:
    """One numbered version: exactly the files uploaded with it."""

    number: int
    files: dict[str, bytes]
    notes: str
    created: float
    bytes_uploaded: int
    pending_queries: int = 0  # GetDatasetStatus answers "pending" this many more times
    lag_queries: int = 0  # lookups of this version by number answer 404 this many more times
    fails: bool = False  # processing ends "failed" (e.g. over the storage quota) instead of "ready"

    @property
    def status(self) -> str:
        if self.pending_queries > 0:
            return "pending"
        return "failed" if self.fails else "ready"

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(data) for name, data in self.files.items()}


@dataclass
class Dataset:
    owner: str
    slug: str
    title: str
    is_private: bool
    license_name: str
    versions: list[Version] = field(default_factory=list)
    first_window_403s: int = 0  # CreateDatasetVersion answers 403 "still processing" this many more times

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def newest_ready(self) -> Version | None:
        ready = [v for v in self.versions if v.status == "ready"]
        return ready[-1] if ready else None


class FakeState:
    """Datasets, versions and blobs, with one lock around all of them."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lock = threading.RLock()
        self.datasets: dict[str, Dataset] = {}
        self.blobs: dict[str, Blob] = {}
        self.processing_delay = 0
        self.lag_queries = 0  # new versions answer 404 to this many lookups by number
        self.failing_versions = 0  # the next this many versions fail processing after an ok create
        self.first_version_403s = 0  # given to the next dataset created: 403s while its first version processes
        self.lose_from_next_version: set[str] = set()
        self.usernames_by_token: dict[str, str] = {}
        self.refusing = False  # refuse_credentials(): tokens introspect as inactive
        self.deleted_refs: set[str] = set()  # slugs a deleted dataset still keeps
        self.wrap_above: int | None = None  # single files larger than this are served wrapped in a zip
        self.kernels = KernelsState(self.lock, self.dataset_visible)

    def rpc(self, name: str, user: str | None, body: dict[str, Any]) -> Reply:
        handler = getattr(self, f"_rpc_{name}", None) or getattr(self.kernels, f"_rpc_{name}", None)
        if handler is None:
            return error(404, f"unknown method {name}")
        with self.lock:
            return handler(user, body)

    def dataset_visible(self, user: str | None, ref: str) -> bool:
        """Whether ``user`` may see (and so attach) the dataset ``owner/slug``."""
        with self.lock:
            dataset = self.datasets.get(ref)
            return dataset is not None and (not dataset.is_private or dataset.owner == user)

    # -- blobs ---------------------------------------------------------------------------------------------

    def put_blob(self, token: str, data: bytes, content_range: str | None) -> int:
        """A PUT to ``createUrl``: the whole file, or (``bytes */N``, empty body) a resume query."""
        with self.lock:
            blob = self.blobs.get(token)
            if blob is None:
                return 404
            if content_range and content_range.startswith("bytes */"):
                return 200 if blob.data is not None else 308
            blob.bytes_received += len(data)
            if len(data) != blob.content_length:
                return 400
            blob.data = data
            return 200

    def _rpc_StartBlobUpload(self, user: str | None, body: dict[str, Any]) -> Reply:
        token = "blob-" + secrets.token_hex(12)
        self.blobs[token] = Blob(token, str(body.get("name", "")), int(body.get("contentLength", 0)))
        return Reply(200, {"token": token, "createUrl": f"{self.base_url}/upload/{token}"})

    def _new_version(self, number: int, files: list[dict[str, Any]], notes: str) -> Version | Reply:
        contents: dict[str, bytes] = {}
        uploaded = 0
        for item in files:
            blob = self.blobs.get(str(item.get("token")))
            if blob is None or blob.data is None:
                return error(400, f"blob {item.get('token')!r} was never uploaded")
            uploaded += blob.bytes_received
            if blob.name not in self.lose_from_next_version:
                contents[blob.name] = blob.data
        self.lose_from_next_version = set()
        fails, self.failing_versions = self.failing_versions > 0, max(0, self.failing_versions - 1)
        return Version(number, contents, notes, time.time(), uploaded, self.processing_delay, self.lag_queries, fails)

    # -- datasets ------------------------------------------------------------------------------------------

    def _find(self, user: str | None, body: dict[str, Any], slug_key: str = "datasetSlug") -> Dataset | Reply:
        dataset = self.datasets.get(f"{body.get('ownerSlug', '')}/{body.get(slug_key, '')}")
        if dataset is None or (dataset.is_private and dataset.owner != user):
            return error(404, "dataset not found")
        return dataset

    def _version(self, dataset: Dataset, number: int | None) -> Version | Reply:
        if number is None:
            version = dataset.newest_ready()
        else:
            version = next((v for v in dataset.versions if v.number == number), None)
            if version is not None and version.lag_queries > 0:  # created, but not visible yet (#890)
                version.lag_queries -= 1
                return error(404, f"{dataset.ref}: no such version {number}")
        return version if version is not None else error(404, f"{dataset.ref}: no such version {number}")

    def _rpc_CreateDataset(self, user: str | None, body: dict[str, Any]) -> Reply:
        owner, slug = str(body.get("ownerSlug") or user), str(body.get("slug", ""))
        if owner != user:
            return error(403, f"{user} cannot create datasets for {owner}")
        ref, title = f"{owner}/{slug}", str(body.get("title", ""))
        if ref in self.datasets or ref in self.deleted_refs:
            return Reply(200, {"status": "error", "error": f'The requested slug "{slug}" is already in use'})
        if any(d.owner == owner and d.title == title for d in self.datasets.values()):
            text = f'The requested title "{title}" is already in use by a dataset. Please choose another title.'
            return Reply(200, {"status": "error", "error": text})
        version = self._new_version(1, body.get("files", []), "Initial release")
        if isinstance(version, Reply):
            return version
        dataset = Dataset(owner, slug, title, bool(body.get("isPrivate", False)), "")
        dataset.license_name = str(body.get("licenseName", ""))
        dataset.versions.append(version)
        dataset.first_window_403s, self.first_version_403s = self.first_version_403s, 0
        self.datasets[ref] = dataset
        return Reply(200, {"ref": ref, "url": f"{self.base_url}/datasets/{ref}", "status": "ok"})

    def _rpc_CreateDatasetVersion(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        if dataset.owner != user:
            return error(403, "permission denied")
        # Only the first version's processing blocks a new version (kagglehub #181, #182).
        first = dataset.versions[0]
        if (first.number == 1 and first.status == "pending") or dataset.first_window_403s:
            dataset.first_window_403s = max(0, dataset.first_window_403s - 1)
            return error(403, "The first version of this dataset is still processing; try again later")
        request = body.get("body") or {}
        number = dataset.versions[-1].number + 1 if dataset.versions else 1
        version = self._new_version(number, request.get("files", []), request.get("versionNotes", ""))
        if isinstance(version, Reply):
            return version
        dataset.versions.append(version)
        if request.get("deleteOldVersions"):  # the new version, still processing, is then the only copy
            dataset.versions = [version]
        return Reply(200, {"ref": dataset.ref, "url": f"{self.base_url}/datasets/{dataset.ref}", "status": "ok"})

    def _rpc_GetDatasetStatus(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        newest = dataset.versions[-1]
        if newest.pending_queries > 0:
            newest.pending_queries -= 1
            return Reply(200, {"status": PENDING_STATUS})
        return Reply(200, {"status": FAILED_STATUS if newest.fails else READY_STATUS})

    def _rpc_GetDataset(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        info = {"ref": dataset.ref, "title": dataset.title, "isPrivate": dataset.is_private}
        info.update(ownerRef=dataset.owner, licenseName=dataset.license_name)
        ready = dataset.newest_ready()  # the newest *processed* version; omitted before the first one (#890)
        if ready is not None:
            info["currentVersionNumber"] = ready.number
        return Reply(200, info)

    def _rpc_GetDatasetMetadata(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        info = {"datasetSlug": dataset.slug, "ownerUser": dataset.owner, "title": dataset.title}
        info.update(isPrivate=dataset.is_private, licenses=[{"name": dataset.license_name}])
        return Reply(200, {"info": info})

    def _rpc_ListDatasetFiles(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        version = self._version(dataset, body.get("datasetVersionNumber"))
        if isinstance(version, Reply):
            return version
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 20)
        names = sorted(version.files)
        created = iso(version.created)
        files = [
            {
                "ref": f"{dataset.ref}/{name}",
                "name": name,
                "totalBytes": len(version.files[name]),
                "creationDate": created,
            }
            for name in names[start : start + size]
        ]
        reply: dict[str, Any] = {"datasetFiles": files}
        if start + size < len(names):
            reply["nextPageToken"] = str(start + size)
        return Reply(200, reply)

    def _rpc_DownloadDataset(self, user: str | None, body: dict[str, Any]) -> Reply:
        dataset = self._find(user, body)
        if isinstance(dataset, Reply):
            return dataset
        version = self._version(dataset, body.get("datasetVersionNumber"))
        if isinstance(version, Reply):
            return version
        name = body.get("fileName")
        if not name:
            location = f"{self.base_url}/download/{dataset.ref}/{version.number}/{dataset.slug}.zip"
            return Reply(302, None, {"Location": location})
        if name not in version.files:
            return error(404, f"{dataset.ref}: version {version.number} has no file {name!r}")
        wrapped = self.wrap_above is not None and len(version.files[name]) > self.wrap_above
        location = downloads.file_url(self.base_url, dataset.ref, version.number, name, wrapped)
        return Reply(302, None, {"Location": location})

    def _rpc_IntrospectToken(self, user: str | None, body: dict[str, Any]) -> Reply:
        username = None if self.refusing else self.usernames_by_token.get(str(body.get("token", "")))
        return Reply(200, {"active": True, "username": username} if username else {"active": False})

    # -- downloads ---------------------------------------------------------------------------------------------

    def download(self, parts: list[str], range_header: str | None, if_range: str | None) -> Reply | None:
        """What a GET of ``/download/...`` (a 302 target of DownloadDataset) answers; None if no such route."""
        single = downloads.parse_file_path(parts)
        if single is None:
            if len(parts) != 5 or parts[0] != "download" or not parts[3].isdigit() or parts[4] != f"{parts[2]}.zip":
                return None
            found = self.version_zip(parts[1], parts[2], int(parts[3]))
            return None if found is None else downloads.serve(*found, "application/zip", range_header, if_range)
        owner, slug, number, name, wrapped = single
        with self.lock:
            version = self._stored_version(f"{owner}/{slug}", number)
            if version is None or name not in version.files:
                return None
            data, created = version.files[name], version.created
        if wrapped:  # one member, under the file's base name
            data = downloads.zip_of({name.rsplit("/", 1)[-1]: data}, created)
        content_type = "application/zip" if wrapped else "application/octet-stream"
        return downloads.serve(data, created, content_type, range_header, if_range)

    def version_zip(self, owner: str, slug: str, number: int) -> tuple[bytes, float] | None:
        """The zip a version downloads as, and its modification time; None if there is no such version."""
        with self.lock:
            version = self._stored_version(f"{owner}/{slug}", number)
            if version is None:
                return None
            files, created = dict(version.files), version.created
        return downloads.zip_of(files, created), created

    def _stored_version(self, ref: str, number: int) -> Version | None:
        dataset = self.datasets.get(ref)
        return next((v for v in dataset.versions if v.number == number), None) if dataset else None
