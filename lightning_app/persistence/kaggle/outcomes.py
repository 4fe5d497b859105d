"""What one Kaggle call is and what it answers: the vocabulary the parent and its child process share.

The parent (`calls.ChildCalls`) writes the operation's arguments as JSON and starts
``python -m lightning_app.persistence.kaggle.child <operation> <args.json> <result.json>``; the child writes a
`CallResult`. Both sides read and write these types, so no outcome is a bare string to be matched on one side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Operation(str, Enum):
    """The calls a child process can make (``operations.OPERATIONS`` implements each one)."""

    PUBLISH = "publish"  # create the dataset, or add a version
    SETTLE = "settle"  # ask again about a version still processing
    CHECK = "check"  # log in and look at the dataset, no upload
    WHOAMI = "whoami"  # the user the credentials log in as
    LIST = "list"  # the files of a version
    READ_VERSION = "read_version"  # a version's number, its files, and the text of its small files
    READ_NEWEST = "read_newest"  # the newest version of several datasets, with the text of one small file each
    DOWNLOAD_FILE = "download_file"  # one file of a version
    QUOTA = "quota"  # the weekly GPU quota
    PUSH_KERNEL = "push_kernel"  # save a new version of a script kernel, run or Quick Save
    KERNEL_STATE = "kernel_state"  # a kernel's newest version, its sessions' status, the version holding a text

    @property
    def writes(self) -> bool:
        """A 403 on a call that writes may be the credential's own permission, which another credential may have."""
        return self in (Operation.PUBLISH, Operation.CHECK, Operation.PUSH_KERNEL)


class FailureKind(str, Enum):
    """How a failed call reads: what the parent does about it."""

    AUTH = "auth"  # credentials missing or refused
    TRANSIENT = "transient"  # a network error, 408, 429, 5xx: worth retrying
    NOT_FOUND = "not_found"  # the dataset or version does not exist (yet)
    REFUSED = "refused"  # a permission or a name the service will not take: never retried
    DISK_FULL = "disk_full"  # no room on the disk a download was meant for
    UNAVAILABLE = "unavailable"  # the installed client cannot ask this (the GPU quota on an old client)
    ERROR = "error"  # anything else


class CallFailed(Exception):
    """A failure the child has classified; raised inside an operation, written into the result file."""

    def __init__(
        self, kind: FailureKind, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind, self.status, self.retry_after = FailureKind(kind), status, retry_after


@dataclass(frozen=True)
class CallResult:
    """The child's answer: ``result`` when ``ok``, otherwise a classified failure (the message holds no secret)."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    kind: FailureKind | None = None
    message: str = ""
    status: int | None = None
    retry_after: float | None = None

    @classmethod
    def failed(cls, failure: CallFailed) -> CallResult:
        return cls(False, {}, failure.kind, str(failure), failure.status, failure.retry_after)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value if self.kind is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallResult:
        kind = FailureKind(data["kind"]) if data.get("kind") else None
        return cls(
            bool(data["ok"]),
            data.get("result") or {},
            kind,
            data.get("message", ""),
            data.get("status"),
            data.get("retry_after"),
        )


class PublishOutcome(str, Enum):
    """What a publish call did."""

    BUSY = "busy"  # the newest version is still processing: nothing was created, ask again later
    EXISTING = "existing"  # the newest version already holds exactly these files (a retry after a lost reply)
    CREATED = "created"  # a new version, processed, with its file list
    PROCESSING = "processing"  # a new version the service has not finished processing: confirm it later
    FAILED = "failed"  # a new version whose processing failed (over the private storage quota?)


@dataclass(frozen=True)
class PublishAnswer:
    """The answer of `Operation.PUBLISH` and `Operation.SETTLE`.

    Attributes:
        outcome: what happened.
        status: the dataset's status as the service said it (``ready``, ``blobs_received``...).
        version: the new (or existing) version's number, when known.
        files: ``(name, size)`` of the version's files, when it is processed.
        before: the newest version's number before this publish: the one after it is ours.
        new_dataset: the dataset was created by this call.
        first_version_refusal: a 403 that may be a new dataset's first version still processing.
        stored_bytes: the dataset's size over the versions it keeps, when measured.
        stored_versions: how many versions ``stored_bytes`` counts.
    """

    outcome: PublishOutcome
    status: str = ""
    version: int | None = None
    files: tuple[tuple[str, int], ...] = ()
    before: int = 0
    new_dataset: bool = False
    first_version_refusal: bool = False
    stored_bytes: int | None = None
    stored_versions: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PublishAnswer:
        files = tuple((str(name), int(size)) for name, size in data.get("files") or ())
        return cls(**{**data, "outcome": PublishOutcome(data["outcome"]), "files": files})
