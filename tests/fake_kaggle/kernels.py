"""Kernels on the fake Kaggle server: pushed versions, their sessions, and the weekly accelerator quota.

RPCs (``kernels.KernelsApiService``), as kagglesdk sends them (see ``/work/notes/kaggle-wire.md``):

- ``SaveKernel`` (``kernels_push``): a new version of ``owner/slug`` (the kernel is created on first push). A
  version with ``kernelExecutionType: "QUICK_SAVE"`` is saved without running (status ``NEW_SCRIPT``); any other
  is queued (``QUEUED``) for the test's "Kaggle runner" to take (``FakeKaggle.next_queued``). Refusals come back
  as HTTP 200 with ``error`` set and no version made, as on the real service: the weekly GPU quota
  (``Maximum weekly GPU quota of 30.00 hours reached.``), the batch session limits (``Maximum batch GPU session
  count of 2 reached.``), another owner's kernel (``Kernel not found``), an unknown ``id`` (``Notebook not
  found``), a malformed slug, or whatever ``refuse_next_push`` queued. Dataset sources that do not exist or
  cannot be seen are dropped into ``invalidDatasetSources`` while the version is still made.
- ``GetKernelSessionStatus`` (``kernels_status``): the status of the newest version that was to run
  (``versionLabel: "vN"`` for version N; a bare ``"N"`` is 404, as on the real service); ``NEW_SCRIPT`` when no
  version ever ran. ``QUEUED`` is proto3's default, so it is left out of the reply (the client reads a missing
  status as ``QUEUED``).
- ``GetKernel`` (``kernels_pull``): metadata and source of the newest (or the labelled) version.
- ``ListKernels`` (``kernels_list``): kernels visible to the caller, filtered by ``user`` / ``search`` / mine.
- ``GetAcceleratorQuotaStatistics`` (``quota_view``): the weekly GPU/TPU quota as protobuf Durations
  (``"108000s"``) and the refresh time as a Timestamp; ``gpuQuota`` is left out when the test hides it.

An unknown kernel of the caller answers 404; another owner's kernel that is private or missing answers 403
``Permission 'kernels.get' was denied`` (kaggle 2.2.5 turns 401/403 of ``kernels_status`` into ``ValueError``).
Nothing here can cancel a session: no client offers it (kagglesdk's CancelKernelSession takes a session id that
no reply carries); a test plays a cancel from the web UI with ``set_kernel_status(..., "CANCEL_REQUESTED")``.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.fake_kaggle.replies import Reply, error

#: kagglesdk ``KernelWorkerStatus`` names.
STATUSES = ("QUEUED", "RUNNING", "COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED", "NEW_SCRIPT")
#: A session in one of these holds a batch slot (and, on a GPU, counts against the session limit).
ACTIVE = ("QUEUED", "RUNNING", "CANCEL_REQUESTED")
#: Which status a session may move to from each status (the platform's order; terminal ones have none).
NEXT_STATUS = {
    "QUEUED": ("RUNNING", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"),
    "RUNNING": ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"),
    "CANCEL_REQUESTED": ("CANCEL_ACKNOWLEDGED", "COMPLETE", "ERROR"),
}
#: Retired machine shapes (lower-cased) and what the server runs instead (None: CPU), per kaggle 2.2.5's
#: ``_RETIRED_ACCELERATORS``: the server substitutes silently and the push succeeds.
RETIRED = {
    "nvidiateslap100": "NvidiaTeslaT4",
    "tpuv38": "TpuV5E8",
    "tpu1vmv38": "TpuV5E8",
    "tpuv232": None,
    "tpuv2256": None,
}
#: What ``enable_gpu``/``enable_tpu`` without a ``machine_shape`` run on (the default GPU is T4 x2).
DEFAULT_GPU = "NvidiaTeslaT4"
DEFAULT_TPU = "TpuV5E8"
#: Where the ``url`` of a push points (never requested by the tests).
SITE = "https://www.kaggle.com"
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_VERSION_LABEL = re.compile(r"v(\d+)")


@dataclass
class KernelVersion:
    """One pushed version, with what its push asked for and (when it runs) its session.

    Attributes:
        ref: ``owner/slug`` of its kernel.
        number: the version number (1, 2, ...), Quick Saves included.
        source: the pushed code (``text``).
        machine_shape: the accelerator asked for (``machineShape``), None when not given.
        accelerator: what it runs on: the asked shape, a retired one's replacement, the default GPU/TPU for
            ``enableGpu``/``enableTpu``, or None (CPU).
        dataset_sources: the sources that were attached (invalid ones are left out, as the real service does).
        session_timeout: ``sessionTimeoutSeconds`` (None: the platform's maximum).
        execution: ``kernelExecutionType`` as sent (``""`` when the client left it out: save and run).
        runs: whether it was to run (False for a Quick Save).
        status: a ``KernelWorkerStatus`` name; ``NEW_SCRIPT`` for a version that never runs.
        session_id: the id of its session when it runs (no public reply carries it).
        request: the SaveKernel body as received.
    """

    ref: str
    number: int
    source: str
    title: str
    language: str
    kernel_type: str
    is_private: bool
    enable_internet: bool
    enable_gpu: bool
    enable_tpu: bool
    machine_shape: str | None
    accelerator: str | None
    dataset_sources: list[str]
    kernel_sources: list[str]
    competition_sources: list[str]
    model_sources: list[str]
    session_timeout: int | None
    execution: str
    runs: bool
    status: str
    failure_message: str = ""
    session_id: int | None = None
    created: float = field(default_factory=time.time)
    status_changed: float = field(default_factory=time.time)
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_gpu(self) -> bool:
        return (self.accelerator or "").startswith("Nvidia")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass
class Kernel:
    """A kernel (notebook or script) and its versions, oldest first."""

    id: int
    owner: str
    slug: str
    title: str
    language: str
    kernel_type: str
    is_private: bool = True
    versions: list[KernelVersion] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def newest_run(self) -> KernelVersion | None:
        runs = [v for v in self.versions if v.runs]
        return runs[-1] if runs else None


@dataclass
class AcceleratorQuota:
    """A weekly accelerator allowance, in seconds."""

    used: float = 0.0
    allowed: float = 30 * 3600.0
    reserved: float = 0.0


class KernelsState:
    """Kernels, their versions and sessions, the quota and the push refusals; under the fake's one lock.

    Args:
        lock: the server state's lock (every RPC already holds it).
        dataset_visible: ``(user, "owner/slug") -> bool``: whether a dataset source can be attached.
    """

    def __init__(self, lock: threading.RLock, dataset_visible: Callable[[str | None, str], bool]) -> None:
        self.lock = lock
        self.changed = threading.Condition(lock)  # notified when a session is queued or changes status
        self.dataset_visible = dataset_visible
        self.kernels: dict[str, Kernel] = {}
        self.gpu_quota: AcceleratorQuota | None = AcceleratorQuota()
        self.tpu_quota: AcceleratorQuota | None = AcceleratorQuota(allowed=20 * 3600.0)
        self.quota_refresh: datetime | None = _next_saturday()
        self.gpu_session_limit = 2
        self.cpu_session_limit = 5
        self.push_refusals: list[str] = []  # texts the next SaveKernel calls answer with (HTTP 200, error)
        self._next_kernel_id = 1000
        self._next_session_id = 5000

    # -- RPCs --------------------------------------------------------------------------------------------------

    def _rpc_SaveKernel(self, user: str | None, body: dict[str, Any]) -> Reply:
        kernel = self._kernel_to_save(user, body)
        if isinstance(kernel, Reply):
            return kernel
        runs = body.get("kernelExecutionType") != "QUICK_SAVE"
        accelerator = _accelerator(body)
        refusal = self.push_refusals.pop(0) if self.push_refusals else self._over_a_limit(user, runs, accelerator)
        if refusal:
            return _refused(refusal)
        if kernel.ref not in self.kernels:
            self.kernels[kernel.ref] = kernel
        sources = [str(s) for s in body.get("datasetDataSources") or []]
        invalid = [s for s in sources if not self.dataset_visible(user, s)]
        version = KernelVersion(
            ref=kernel.ref,
            number=len(kernel.versions) + 1,
            source=str(body.get("text") or ""),
            title=str(body.get("newTitle") or kernel.title),
            language=kernel.language,
            kernel_type=kernel.kernel_type,
            is_private=bool(body.get("isPrivate", kernel.is_private)),
            enable_internet=bool(body.get("enableInternet", False)),
            enable_gpu=bool(body.get("enableGpu", False)),
            enable_tpu=bool(body.get("enableTpu", False)),
            machine_shape=body.get("machineShape"),
            accelerator=accelerator,
            dataset_sources=[s for s in sources if s not in invalid],
            kernel_sources=list(body.get("kernelDataSources") or []),
            competition_sources=list(body.get("competitionDataSources") or []),
            model_sources=list(body.get("modelDataSources") or []),
            session_timeout=body.get("sessionTimeoutSeconds"),
            execution=str(body.get("kernelExecutionType") or ""),
            runs=runs,
            status="QUEUED" if runs else "NEW_SCRIPT",
            request=dict(body),
        )
        if runs:
            version.session_id, self._next_session_id = self._next_session_id, self._next_session_id + 1
        kernel.versions.append(version)
        kernel.is_private, kernel.title = version.is_private, version.title
        self.changed.notify_all()
        reply: dict[str, Any] = {"ref": f"/code/{kernel.ref}", "url": f"{SITE}/code/{kernel.ref}"}
        reply.update(versionNumber=version.number, kernelId=kernel.id)
        if invalid:
            reply["invalidDatasetSources"] = invalid
        return Reply(200, reply)

    def _rpc_GetKernelSessionStatus(self, user: str | None, body: dict[str, Any]) -> Reply:
        version = self._readable_version(user, body)
        if isinstance(version, Reply):
            return version
        status = version.status if version is not None else "NEW_SCRIPT"
        reply: dict[str, Any] = {} if status == "QUEUED" else {"status": status}  # proto3 leaves the default out
        if version is not None and version.failure_message:
            reply["failureMessage"] = version.failure_message
        return Reply(200, reply)

    def _rpc_GetKernel(self, user: str | None, body: dict[str, Any]) -> Reply:
        kernel = self._readable(user, body)
        if isinstance(kernel, Reply):
            return kernel
        label = body.get("versionLabel")
        version = self._labelled(kernel, label) if label else kernel.versions[-1]
        if isinstance(version, Reply):
            return version
        blob = {"source": version.source, "language": version.language, "kernelType": version.kernel_type}
        blob["slug"] = kernel.slug
        return Reply(200, {"metadata": _metadata(kernel, version), "blob": blob})

    def _rpc_ListKernels(self, user: str | None, body: dict[str, Any]) -> Reply:
        mine = body.get("group") == "PROFILE"
        wanted_user, search = body.get("user") or "", str(body.get("search") or "").lower()
        kernels = [
            k
            for k in sorted(self.kernels.values(), key=lambda k: k.id)
            if (not k.is_private or k.owner == user)
            and (not mine or k.owner == user)
            and (not wanted_user or k.owner == wanted_user)
            and (not search or search in k.slug or search in k.title.lower())
        ]
        size = int(body.get("pageSize") or 20)
        start = (max(int(body.get("page") or 1), 1) - 1) * size
        return Reply(200, {"kernels": [_metadata(k, k.versions[-1]) for k in kernels[start : start + size]]})

    def _rpc_GetAcceleratorQuotaStatistics(self, user: str | None, body: dict[str, Any]) -> Reply:
        reply: dict[str, Any] = {}
        if self.quota_refresh is not None:
            reply["quotaRefreshTime"] = self.quota_refresh.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, quota in (("gpuQuota", self.gpu_quota), ("tpuQuota", self.tpu_quota)):
            if quota is not None:
                reply[name] = _quota_json(quota)
        return Reply(200, reply)

    # -- what the test's "Kaggle runner" and controls use (under the lock) -----------------------------------

    def version(self, ref: str, number: int) -> KernelVersion:
        kernel = self.kernels.get(ref)
        found = next((v for v in kernel.versions if v.number == number), None) if kernel else None
        if found is None:
            raise KeyError(f"no version {number} of kernel {ref}")
        return found

    def set_status(self, ref: str, number: int, status: str, failure_message: str = "") -> KernelVersion:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        version = self.version(ref, number)
        if status not in NEXT_STATUS.get(version.status, ()):
            raise ValueError(f"{ref} version {number}: {version.status} cannot become {status}")
        version.status, version.status_changed = status, time.time()
        version.failure_message = failure_message
        self.changed.notify_all()
        return version

    def queued(self) -> list[KernelVersion]:
        """Every queued session, oldest first."""
        waiting = [v for k in self.kernels.values() for v in k.versions if v.status == "QUEUED"]
        return sorted(waiting, key=lambda v: (v.created, v.session_id or 0))

    def add(self, owner: str, slug: str, title: str, language: str, kernel_type: str, is_private: bool) -> Kernel:
        kernel = Kernel(self._next_kernel_id, owner, slug, title, language, kernel_type, is_private)
        self._next_kernel_id += 1
        self.kernels[kernel.ref] = kernel
        return kernel

    # -- internals ---------------------------------------------------------------------------------------------

    def _kernel_to_save(self, user: str | None, body: dict[str, Any]) -> Kernel | Reply:
        """The kernel a push writes to (new ones are not stored yet), or the refusal."""
        if body.get("id"):
            found = next((k for k in self.kernels.values() if k.id == body["id"]), None)
            if found is None or found.owner != user:
                return _refused("Notebook not found")
            return found
        owner, _, slug = str(body.get("slug") or "").partition("/")
        if not owner or not slug:
            return error(400, "a kernel slug must look like owner/kernel-slug")
        if owner != user:
            return _refused("Kernel not found")  # pushing to someone else's kernel (kaggle-cli #139)
        if not _SLUG.fullmatch(slug):
            return _refused(f"Invalid kernel slug {slug!r}: use lower-case letters, digits and hyphens")
        existing = self.kernels.get(f"{owner}/{slug}")
        if existing is not None:
            return existing
        title = str(body.get("newTitle") or slug)
        # A kernel's slug is its title lower-cased with hyphens: a title that resolves elsewhere creates (or
        # updates) the kernel under the title's slug (the client only warns; kaggle-cli docs/kernels_metadata.md).
        slug = _slugify(title) or slug
        if f"{owner}/{slug}" in self.kernels:
            return self.kernels[f"{owner}/{slug}"]
        if not body.get("text") or not body.get("language") or not body.get("kernelType"):
            return _refused("A new kernel needs its text, language and kernel type")
        kernel = Kernel(self._next_kernel_id, owner, slug, title, str(body["language"]), str(body["kernelType"]))
        self._next_kernel_id += 1
        kernel.is_private = bool(body.get("isPrivate", True))
        return kernel

    def _over_a_limit(self, user: str | None, runs: bool, accelerator: str | None) -> str:
        """The refusal text of a run over the weekly GPU quota or the batch session limits, or ``""``."""
        if not runs:
            return ""
        gpu = (accelerator or "").startswith("Nvidia")
        quota = self.gpu_quota
        if gpu and quota is not None and quota.used >= quota.allowed:
            return f"Maximum weekly GPU quota of {quota.allowed / 3600:.2f} hours reached."
        active = [v for k in self.kernels.values() if k.owner == user for v in k.versions if v.active]
        if gpu and sum(v.uses_gpu for v in active) >= self.gpu_session_limit:
            return f"Maximum batch GPU session count of {self.gpu_session_limit} reached."
        if not gpu and sum(not v.uses_gpu for v in active) >= self.cpu_session_limit:
            return f"Maximum batch CPU session count of {self.cpu_session_limit} reached."
        return ""

    def _readable(self, user: str | None, body: dict[str, Any]) -> Kernel | Reply:
        owner, slug = str(body.get("userName") or ""), str(body.get("kernelSlug") or "")
        kernel = self.kernels.get(f"{owner}/{slug}")
        if owner != user and (kernel is None or kernel.is_private):
            return error(403, "Permission 'kernels.get' was denied")
        if kernel is None:
            return error(404, "Notebook not found")
        return kernel

    def _readable_version(self, user: str | None, body: dict[str, Any]) -> KernelVersion | Reply | None:
        """The labelled version, else the newest one that was to run (None: none ever ran)."""
        kernel = self._readable(user, body)
        if isinstance(kernel, Reply):
            return kernel
        label = body.get("versionLabel")
        return self._labelled(kernel, label) if label else kernel.newest_run()

    @staticmethod
    def _labelled(kernel: Kernel, label: str) -> KernelVersion | Reply:
        match = _VERSION_LABEL.fullmatch(str(label))  # "v3"; a bare "3" is not found (kaggle 2.2.5 docstring)
        version = next((v for v in kernel.versions if match and v.number == int(match[1])), None)
        return version if version is not None else error(404, f"{kernel.ref}: no version {label!r}")


def snapshot(version: KernelVersion) -> KernelVersion:
    """A copy the test may keep (the server goes on changing its own)."""
    return copy.deepcopy(version)


def _refused(text: str) -> Reply:
    """A push refused the real service's way: HTTP 200, ``error`` set, no version."""
    return Reply(200, {"error": text, "ref": "", "url": "", "versionNumber": 0, "kernelId": 0})


def _accelerator(body: dict[str, Any]) -> str | None:
    shape = str(body.get("machineShape") or "").strip()
    if shape:
        return RETIRED.get(shape.lower(), shape)
    if body.get("enableGpu"):
        return DEFAULT_GPU
    return DEFAULT_TPU if body.get("enableTpu") else None


def _metadata(kernel: Kernel, version: KernelVersion) -> dict[str, Any]:
    """``ApiKernelMetadata`` of ``kernel`` as of ``version``."""
    run = kernel.newest_run()
    data: dict[str, Any] = {
        "id": kernel.id,
        "ref": kernel.ref,
        "title": version.title,
        "author": kernel.owner,
        "slug": kernel.slug,
        "language": version.language,
        "kernelType": version.kernel_type,
        "isPrivate": version.is_private,
        "enableGpu": version.enable_gpu,
        "enableTpu": version.enable_tpu,
        "enableInternet": version.enable_internet,
        "datasetDataSources": version.dataset_sources,
        "kernelDataSources": version.kernel_sources,
        "competitionDataSources": version.competition_sources,
        "modelDataSources": version.model_sources,
        "currentVersionNumber": kernel.versions[-1].number,
    }
    if version.machine_shape:
        data["machineShape"] = version.machine_shape
    if run is not None:
        data["lastRunTime"] = datetime.fromtimestamp(run.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return data


def _quota_json(quota: AcceleratorQuota) -> dict[str, Any]:
    data = {"totalTimeAllowed": _duration(quota.allowed), "hasEverRun": quota.used > 0}
    if quota.used:  # a zero Duration is left out (the client then reads time_used as None)
        data["timeUsed"] = _duration(quota.used)
    if quota.reserved:
        data["timeReserved"] = _duration(quota.reserved)
    return data


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration: ``"108000s"``, ``"3600.5s"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0") + "s"


def _slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _next_saturday() -> datetime:
    """A plausible weekly refresh time: the next Saturday, 00:00 UTC."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=(5 - today.weekday()) % 7 or 7)
