"""A Kaggle script kernel from the parent's side: push a version (run it, or Quick Save), and read its state.

Each call is one bounded child process (``calls.ChildCalls``), as for the dataset store; the client differences are
in ``client.py`` (kagglesdk requests on both client lines). What the answers mean:

- A push Kaggle refuses comes back as HTTP 200 with an error text and no version: `PushRefused`, whose ``reason``
  tells the weekly GPU quota, the limit of concurrent batch sessions, and a name the service will not take apart.
- A push whose reply is lost may still have queued a run, and a second push would queue a second one. So a retry
  first looks whether the newest version holds the push's ``token`` (a string that is in the pushed source only):
  `KaggleKernels.push` with ``look_first``.
- A kernel's sessions: ``QUEUED``, ``RUNNING`` and ``CANCEL_REQUESTED`` are `ACTIVE`; ``COMPLETE``, ``ERROR`` and
  ``CANCEL_ACKNOWLEDGED`` have `ENDED`; a kernel only ever Quick Saved answers ``NEW_SCRIPT``.
- No client can cancel a running session (kagglesdk's CancelKernelSession takes a session id no reply carries).

Example::

    kernels = KaggleKernels("alice/rope-small-chain")
    state = kernels.state()
    if state.exists and not state.active:
        pushed = retry_call(lambda: kernels.push(folder, token=token, look_first=True))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lightning_app.persistence.kaggle.calls import ChildCalls
from lightning_app.persistence.kaggle.names import check_kernel
from lightning_app.persistence.kaggle.outcomes import Operation
from lightning_app.persistence.kaggle.quota import GpuQuota, gpu_quota_from
from lightning_app.persistence.kaggle.store import raise_failure
from lightning_app.persistence.store import RefusedError

#: Session statuses of a run that has not ended: no other run of the kernel may be started meanwhile.
ACTIVE = ("QUEUED", "RUNNING", "CANCEL_REQUESTED")
#: Session statuses of a run that has ended.
ENDED = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


class PushRefused(RefusedError):
    """Kaggle refused a push (an HTTP 200 with an error text; no version was made).

    Attributes:
        text: Kaggle's words, e.g. ``Maximum weekly GPU quota of 30.00 hours reached.``
        reason: ``"quota"`` (the weekly GPU quota), ``"sessions"`` (too many batch sessions at once), ``"name"``
            (a slug the service will not take, another user's kernel) or ``"other"``.
    """

    def __init__(self, ref: str, text: str) -> None:
        super().__init__(f"Kaggle refused the push of {ref}: {text}")
        self.text = text
        lowered = text.lower()
        if "quota" in lowered:
            self.reason = "quota"
        elif "session count" in lowered:
            self.reason = "sessions"
        elif any(word in lowered for word in ("slug", "not found", "invalid", "title")):
            self.reason = "name"
        else:
            self.reason = "other"


@dataclass(frozen=True)
class KernelState:
    """A kernel as Kaggle reports it.

    Attributes:
        exists: False for a kernel of the caller that does not exist (yet).
        current_version: the newest version's number, Quick Saves included.
        status: the newest session's status (``RUNNING``...; ``NEW_SCRIPT`` when no version ever ran).
        failure_message: what Kaggle said about that session's failure, if anything.
        versions: ``{number: (status, failure_message)}`` for the versions asked about (``MISSING`` when unknown).
        token_version: the newest version, of the last few, whose source holds the token asked about.
        quota: the weekly GPU quota, when asked and the client can tell.
        quota_unavailable: why the quota, asked, could not be told.
    """

    exists: bool
    current_version: int | None = None
    status: str | None = None
    failure_message: str = ""
    versions: dict[int, tuple[str, str]] = field(default_factory=dict)
    token_version: int | None = None
    quota: GpuQuota | None = None
    quota_unavailable: str = ""

    @property
    def active(self) -> bool:
        """Whether the newest session is queued or running."""
        return self.status in ACTIVE


@dataclass(frozen=True)
class PushedKernel:
    """A version a push made.

    Attributes:
        version: its number.
        url: the kernel's address.
        existing: found by its token after a lost reply (an earlier attempt made it), not pushed again.
        invalid_sources: dataset sources Kaggle did not attach (missing, or not visible to the user).
    """

    version: int
    url: str
    existing: bool = False
    invalid_sources: tuple[str, ...] = ()


class KaggleKernels:
    """The script kernel ``owner/slug`` of the logged-in user.

    Args:
        ref: ``owner/slug``.
        call_timeout: seconds allowed for any one call.
    """

    def __init__(self, ref: str, call_timeout: float = 120.0) -> None:
        check_kernel("kernel", ref)
        self.ref = ref
        self.call_timeout = float(call_timeout)
        self.description = f"kaggle:kernel {ref}"
        self._calls = ChildCalls(self.description)

    @property
    def url(self) -> str:
        """The kernel's page on kaggle.com."""
        return f"https://www.kaggle.com/code/{self.ref}"

    def state(
        self, versions: tuple[int, ...] = (), token: str | None = None, back: int = 5, quota: bool = False
    ) -> KernelState:
        """The kernel's newest version and session status, the status of each of ``versions``, (with ``token``) the
        newest of its last ``back`` versions whose source holds ``token``, and (with ``quota``) the weekly GPU
        quota. One child process."""
        args = {"ref": self.ref, "versions": [int(v) for v in versions], "token": token, "back": int(back)}
        args["quota"] = quota
        result = self._call(Operation.KERNEL_STATE, args)
        if not result["exists"]:
            return KernelState(False)
        return KernelState(
            True,
            result["current_version"],
            result["status"],
            result["failure_message"],
            {int(number): (str(s), str(m)) for number, (s, m) in result["versions"].items()},
            result["token_version"],
            gpu_quota_from(result["quota"]) if result.get("quota") else None,
            result.get("quota_unavailable", ""),
        )

    def push(
        self, folder: Path, *, quick_save: bool = False, token: str | None = None, look_first: bool = False
    ) -> PushedKernel:
        """Push ``folder`` (``kernel-metadata.json`` and its script) as a new version: one attempt.

        ``look_first`` (a retry): when the newest version already holds ``token``, it is that version (an earlier
        attempt made it), and nothing is pushed. Raises `PushRefused` when Kaggle refuses, a `StoreError` otherwise.
        """
        args = {"folder": str(Path(folder).absolute()), "quick_save": quick_save, "token": token}
        args["look_first"] = look_first
        result = self._call(Operation.PUSH_KERNEL, args)
        if result["error"]:
            raise PushRefused(self.ref, result["error"])
        invalid = tuple(result["invalid_dataset_sources"])
        return PushedKernel(int(result["version"]), result["url"] or self.url, bool(result["existing"]), invalid)

    def _call(self, op: Operation, args: dict) -> dict:
        return raise_failure(self._calls.run(op, args, self.call_timeout), f"{self.description}: {op.value}")
