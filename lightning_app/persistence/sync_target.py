"""Where a run's checkpoints go: the ``--sync.*`` settings that say it, and `make_store`, the one way the store is
made, for the sync callback, for ``--resume`` and for the ``checkpoints`` command alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lightning_app.persistence.store import AuthError, CheckpointStore, StoreError

log = logging.getLogger("lightning_app.sync")


@dataclass(frozen=True)
class StoreOptions:
    """The ``--sync.*`` settings that say where a run's checkpoints go (see `KaggleDatasetSync` for each)."""

    dataset: str | None = None
    enabled: bool | str = "auto"
    directory: str | None = None
    title: str | None = None
    call_timeout: float = 120.0
    delete_old_versions: bool = False


@dataclass(frozen=True)
class StoreChoice:
    """What `make_store` found: a store, or why there is none.

    Attributes:
        store: where checkpoints go; None when syncing is off, without credentials, or when it could not be made.
        why_none: a few words when ``store`` is None (``syncing is off``, ``no Kaggle credentials found ...``).
        error: the store could not be made although credentials exist (a login that failed or was refused): its
            dataset could not be read. None otherwise.
        dataset: the dataset's name as far as it is known (for messages), also when there is no store.
    """

    store: CheckpointStore | None
    why_none: str = ""
    error: StoreError | None = None
    dataset: str = ""


def make_store(options: StoreOptions, experiment: str, login_attempts: int = 3) -> StoreChoice:
    """The store of a run whose experiment name is ``experiment`` (the default dataset is
    ``<kaggle user>/<experiment>-checkpoints``): a `DirectoryStore` for ``--sync.directory``, else the Kaggle
    dataset when credentials are found. With an access token and no ``--sync.dataset`` the user is asked at login
    (over the network: retried ``login_attempts`` times)."""
    if options.directory:
        from lightning_app.persistence.directory_store import DirectoryStore

        store = DirectoryStore(Path(options.directory))
        return StoreChoice(store, dataset=store.description)
    if options.enabled is False:
        return StoreChoice(None, "syncing is off (--sync.enabled false)")
    from lightning_app.persistence.kaggle.credentials import NO_CREDENTIALS_ADVICE, find_credentials
    from lightning_app.persistence.kaggle.store import KaggleDatasetStore, login_username
    from lightning_app.persistence.retry import retry_call

    credentials = find_credentials()
    if credentials is None:
        return StoreChoice(None, f"no Kaggle credentials found ({NO_CREDENTIALS_ADVICE})")
    slug = f"{experiment}-checkpoints"
    dataset = options.dataset
    if dataset is None:
        username = credentials.username
        if username is None:
            try:  # a network blip at login must not turn syncing off for the session
                username = retry_call(lambda: login_username(options.call_timeout), attempts=login_attempts)
            except StoreError as error:
                fix = "pass --sync.dataset OWNER/SLUG"
                why = f"could not learn whose credentials {credentials.source} are ({error}): {fix}"
                log.warning(why)
                return StoreChoice(None, why, error, dataset=f"?/{slug}")
            if not username:
                why = f"the credentials from {credentials.source} name no user: pass --sync.dataset OWNER/SLUG"
                log.warning(why)
                return StoreChoice(None, why, AuthError(why), dataset=f"?/{slug}")
        dataset = f"{username}/{slug}"
    store = KaggleDatasetStore(
        dataset, title=options.title, call_timeout=options.call_timeout, delete_old_versions=options.delete_old_versions
    )
    log.info(f"Checkpoints will be published to {store.description} (credentials: {credentials.source})")
    return StoreChoice(store, dataset=dataset)
