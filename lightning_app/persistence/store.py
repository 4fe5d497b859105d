"""Where checkpoints go between sessions: the `CheckpointStore` base class, its errors, and `make_store`.

Callbacks, the restore hook and the commands talk to a store, never to HTTP. Implementations:
`KaggleDatasetStore` (``kaggle/store.py``, the real ``kaggle`` client in child processes) and `DirectoryStore`
(``directory_store.py``: a local or mounted folder, e.g. Google Drive on Colab, and unit tests). ``sync_target.py``
makes the one a run uses.

Every method makes one bounded attempt and raises a `StoreError` subclass on failure; the retry policy
(``retry.py``) decides what to do about it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int


@dataclass(frozen=True)
class PublishedVersion:
    """What one publish produced. ``number`` is None where the store cannot tell yet.

    ``processing``: the store accepted the files but has not finished processing them (a Kaggle version that is
    not visible yet); `CheckpointStore.confirm` tells later. ``stored_bytes``: the store's whole size after this
    version (all versions it keeps), where known.
    """

    number: int | None
    files: tuple[RemoteFile, ...]
    bytes_sent: int
    seconds: float
    processing: bool = False
    stored_bytes: int | None = None


class StoreError(Exception):
    """A store call failed. Subclasses say whether trying again can help."""


class TransientError(StoreError):
    """Worth retrying: 5xx, 429, connection errors, timeouts, 403 while the previous version is processing.

    ``retry_after``: seconds the service asked to wait (a 429's ``Retry-After``), if it said.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(StoreError):
    """Credentials missing or refused: retrying cannot help; syncing stops with one warning."""


class RefusedError(StoreError):
    """Refused for good (a dataset name in use by someone else, no permission): syncing stops with one warning."""


class ProcessingFailedError(StoreError):
    """The store accepted a version, then failed to process it (over the storage quota?): publishing that same
    version again would fail again; the next checkpoint is still published."""


class NotFoundError(StoreError):
    """The dataset (or version) does not exist yet."""


class NoSpaceError(StoreError):
    """A download's disk has no room for the file (ENOSPC/EDQUOT, or less free space than the file needs)."""


@dataclass(frozen=True)
class VersionContents:
    """One version as a store lists it: its number, its files, and the text of the small files asked for."""

    number: int | None
    files: tuple[RemoteFile, ...]
    texts: dict[str, str] = field(default_factory=dict)


class CheckpointStore(ABC):
    """Versions of a few files: publish a folder as the newest version; read a version's listing, fetch a file.

    Subclasses implement `publish`, `read_version` and `fetch_file`; the other methods have defaults that fit a
    store which finishes each publish before it returns.

    Attributes:
        description: where it stores, for log lines: ``kaggle:owner/slug`` or ``dir:/content/drive/...``.
    """

    description: str

    @property
    def name(self) -> str:
        """What a user calls it in messages (a Kaggle ``owner/slug``; by default the description)."""
        return self.description

    @abstractmethod
    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        """Make the files directly in ``folder`` the store's newest version (create the dataset, private, on first
        use). Waits for the previous version to be ready first; checks the new version's file list."""

    @abstractmethod
    def read_version(self, version: int | None = None, texts: tuple[str, ...] = ()) -> VersionContents:
        """The number and files of ``version`` (default: the newest readable one) and the text of those of
        ``texts`` it holds (small files: a manifest). ``NotFoundError`` when there is no such version (nothing
        published yet, or a version deleted)."""

    @abstractmethod
    def fetch_file(self, name: str, dest: Path, version: int, size: int | None = None) -> Path:
        """Download the one file ``name`` of ``version`` into the folder ``dest`` (onto its disk, needing about
        the file's size) and return its path there; the file is whole or absent. ``size``, when known, is
        checked. `NoSpaceError` when ``dest``'s disk has no room for it."""

    def list_files(self, version: int | None = None) -> list[RemoteFile]:
        """Files of ``version`` (default: the newest one)."""
        return list(self.read_version(version).files)

    def fetch(self, dest: Path, version: int | None = None) -> Path:
        """Download every file of ``version`` (default: the newest one) into the folder ``dest``; returns it."""
        listing = self.read_version(version)
        for remote in listing.files:
            self.fetch_file(remote.name, dest, listing.number)
        return Path(dest)

    def confirm(self) -> PublishedVersion | None:
        """Ask again about the last publish that came back ``processing``: the version once it is ready, None while
        it is still processing (or when none is). ``ProcessingFailedError`` when its processing failed."""
        return None

    def check_access(self) -> str:
        """A cheap check that publishing can work (no upload): a few words on what was found, or a `StoreError`."""
        return f"{self.description} is reachable"

    def cancel(self) -> None:  # noqa: B027 - optional: a store whose calls end by themselves needs nothing here
        """End the calls in progress now (the trainer is shutting down)."""
