"""The small protocol every checkpoint store speaks: publish a folder as a version, list, fetch.

Callbacks and the restore hook talk to this, never to HTTP. Implementations: ``KaggleDatasetStore``
(``kaggle_store.py``, the real ``kaggle`` client) and ``DirectoryStore`` (``directory_store.py``: a local or
mounted folder, e.g. Google Drive on Colab, and unit tests).

Every method makes one bounded attempt and raises a ``StoreError`` subclass on failure; the retry policy
(``retry.py``) decides what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int


@dataclass(frozen=True)
class PublishedVersion:
    """What one publish produced. ``number`` is None where the store cannot tell (kaggle 1.6 on create).

    ``pending``: the store accepted the files but has not finished processing them (a Kaggle version that is
    not visible yet); ``confirm()`` on the store tells later. ``stored_bytes``: the store's whole size after
    this version (all versions it keeps), where known.
    """

    number: int | None
    files: tuple[RemoteFile, ...]
    bytes_sent: int
    seconds: float
    pending: bool = False
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


@runtime_checkable
class CheckpointStore(Protocol):
    #: Where it stores, for log lines: ``kaggle:owner/slug`` or ``dir:/content/drive/...``. Never a secret.
    description: str

    def publish(self, folder: Path, notes: str) -> PublishedVersion:
        """Make the files directly in ``folder`` the store's newest version (create the dataset, private, on
        first use). Waits for the previous version to be ready first; checks the new version's file list."""
        ...

    def list_files(self, version: int | None = None) -> list[RemoteFile]:
        """Files of ``version`` (default: the newest ready one). ``NotFoundError`` when nothing is published."""
        ...

    def fetch(self, dest: Path, version: int | None = None) -> Path:
        """Download ``version`` (default newest) into the empty folder ``dest``, unpacked; returns ``dest``."""
        ...
