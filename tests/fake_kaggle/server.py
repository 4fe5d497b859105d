"""A fake Kaggle API on 127.0.0.1 that the real ``kaggle`` client (>= 1.7, kagglesdk wire protocol) talks to.

Standard library only: a ``ThreadingHTTPServer`` on a free port in a daemon thread. It answers
``POST /api/v1/<service>/<Method>`` RPCs (datasets: ``state.py``; kernels and the quota: ``kernels.py``), blob
uploads (``PUT /upload/<token>``) and downloads (``GET /download/...``, reached by the 302 of DownloadDataset:
a version's zip, one file, or one file wrapped as ``<name>.zip``; ``downloads.py``). The test plays the Kaggle
platform for pushed kernels through the methods of ``KernelControls`` (``kernel_controls.py``).

Example::

    with FakeKaggle() as fake:
        env = fake.env(tmp_path)          # for subprocesses: {**os.environ, **env}
        fake.fail_next(1, status=500, methods="CreateDatasetVersion")
        fake.wrap_files_above(1 << 20)    # single-file downloads above 1 MiB arrive as <name>.zip
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.fake_kaggle.faults import Fault, FaultPlan, as_methods
from tests.fake_kaggle.handler import Handler, RequestRecord, Server
from tests.fake_kaggle.kernel_controls import KernelControls
from tests.fake_kaggle.state import Dataset, FakeState, Version

#: Prepended to PYTHONPATH by ``env()``: its sitecustomize.py points kagglesdk at FAKE_KAGGLE_URL.
SITE_DIR = Path(__file__).resolve().parent / "site"

#: Variables a developer's shell may hold that would steer the client away from the fake's credentials.
UNSET_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL")


class FakeKaggle(KernelControls):
    """The fake Kaggle API server, its accepted credentials, fault injection and introspection.

    Args:
        username: the one accepted user (owner of the datasets it creates).
        key: the accepted API key (Basic auth); random by default, so a test can search for it in any byte.
        token: the accepted access token (Bearer auth, IntrospectToken).
        hang_limit: longest time (s) a hung request is held when nobody calls ``release()``.
    """

    def __init__(
        self, *, username: str = "fake-user", key: str | None = None, token: str | None = None, hang_limit: float = 30.0
    ) -> None:
        self.username = username
        self.key = key or "fake-key-" + secrets.token_hex(16)
        self.token = token or "KGAT_fake_" + secrets.token_hex(16)
        self.hang_limit = hang_limit
        self.faults = FaultPlan()
        self.state = FakeState("http://127.0.0.1:0")
        self._refusing = False
        #: Access tokens that log in but may not create datasets or versions (a notebook's session token may not).
        self.read_only_tokens: set[str] = set()
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> FakeKaggle:
        server = Server(("127.0.0.1", 0), Handler)
        server.fake = self
        self._server = server
        self.state.base_url = self.url
        self.state.usernames_by_token[self.token] = self.username
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-kaggle", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hung requests are released (and dropped)."""
        if self._server is None:
            return
        self.faults.clear()
        self.faults.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeKaggle is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- pointing clients here -----------------------------------------------------------------------------

    def env(self, tmp_path: str | os.PathLike) -> dict[str, str]:
        """Variables that point the real client at this server, in this process or any child process.

        Set them over ``os.environ`` (and remove ``UNSET_VARS``). ``KAGGLE_CONFIG_DIR`` and ``TMPDIR`` (where the
        client keeps its resumable-upload state) are fresh folders under ``tmp_path``; ``HOME`` is untouched.
        """
        config_dir = Path(tmp_path) / "kaggle-config"
        tmp_dir = Path(tmp_path) / "tmp"
        config_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        python_path = [str(SITE_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "FAKE_KAGGLE_URL": self.url,
            "KAGGLE_USERNAME": self.username,
            "KAGGLE_KEY": self.key,
            "KAGGLE_CONFIG_DIR": str(config_dir),
            "TMPDIR": str(tmp_dir),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": os.pathsep.join(python_path),
        }

    @contextlib.contextmanager
    def point_client_here(self) -> Iterator[None]:
        """Point an in-process ``kagglesdk``/``KaggleApi`` here (sitecustomize does this for child processes).

        The caller sets the ``env()`` variables first, so that ``import kaggle`` finds the credentials.
        """
        from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

        previous = _env_to_endpoint[KaggleEnv.LOCAL]
        _env_to_endpoint[KaggleEnv.LOCAL] = self.url
        from kaggle.api.kaggle_api_extended import KaggleApi

        added = "--local" not in KaggleApi.args  # decided at import time from KAGGLE_API_ENVIRONMENT
        if added:
            KaggleApi.args.append("--local")
        try:
            yield
        finally:
            _env_to_endpoint[KaggleEnv.LOCAL] = previous
            if added:
                KaggleApi.args.remove("--local")

    # -- fault injection -----------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        methods: str | Iterable[str] | None = None,
        *,
        message: str = "",
        after_commit: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with HTTP ``status`` (e.g. 500, 429, 403).

        With ``retry_after`` the answer carries ``Retry-After`` and the RESOURCE_EXHAUSTED body of a real 429.
        """
        self.faults.add(Fault("fail", n, as_methods(methods), status, message, after_commit, retry_after))

    def hang_next(self, n: int = 1, methods: str | Iterable[str] | None = None, *, after_commit: bool = False) -> None:
        """Hold the next ``n`` matching requests until ``release()``/``stop()``/``hang_limit``, then drop them."""
        self.faults.add(Fault("hang", n, as_methods(methods), after_commit=after_commit))

    def drop_next(self, n: int = 1, methods: str | Iterable[str] | None = None, *, after_commit: bool = False) -> None:
        """Close the socket of the next ``n`` matching requests with no response.

        With ``after_commit=True`` the request takes effect first: a reply lost after the server committed.
        """
        self.faults.add(Fault("drop", n, as_methods(methods), after_commit=after_commit))

    def cut_next(self, n: int = 1, methods: str | Iterable[str] | None = "GET") -> None:
        """Send the headers and half the body of the next ``n`` matching answers, then close the connection (a
        download that breaks off; the request takes effect)."""
        self.faults.add(Fault("cut", n, as_methods(methods), after_commit=True))

    def release(self) -> None:
        """Let hung requests go (each is then dropped)."""
        self.faults.release()

    def processing_delay(self, k: int) -> None:
        """Versions created from now on answer "pending" to their next ``k`` status queries (0: ready at once)."""
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        with self.state.lock:
            self.state.processing_delay = k

    def lag_new_versions(self, k: int) -> None:
        """Versions created from now on answer 404 to their next ``k`` lookups by number (``owner/slug/N`` list
        or download), as a new version does for several seconds on the real service (0: visible at once)."""
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        with self.state.lock:
            self.state.lag_queries = k

    def wrap_files_above(self, size: int | None) -> None:
        """Single-file downloads (DownloadDataset with a file name) of files over ``size`` bytes arrive wrapped in
        a zip named ``<name>.zip`` holding that one file, as large files do on the real service (None: never).

        The real threshold is not published (a 61 KB file arrives as it is, a 144 MB one wrapped); the default
        is None so that a test asks for wrapping where it means to."""
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0 or None; got {size}")
        with self.state.lock:
            self.state.wrap_above = size

    def fail_processing(self, n: int = 1) -> None:
        """The next ``n`` versions created fail processing (status "failed") after their create call answered
        ok, as over the private storage quota; with ``processing_delay`` they first answer "pending"."""
        with self.state.lock:
            self.state.failing_versions = n

    def refuse_versions_of_new_dataset(self, n: int) -> None:
        """The next dataset created answers 403 "first version still processing" to its next ``n``
        CreateDatasetVersion calls (the first-version window; a first version still "pending" does so too)."""
        with self.state.lock:
            self.state.first_version_403s = n

    def lose_next_upload(self, *names: str) -> None:
        """Leave ``names`` out of the next version although they were uploaded (what kaggle 1.6 can do)."""
        with self.state.lock:
            self.state.lose_from_next_version = set(names)

    def add_dataset(self, ref: str, title: str, files: dict[str, bytes] | None = None) -> Dataset:
        """A private dataset that already exists (made elsewhere), with one ready version holding ``files``."""
        owner, slug = ref.split("/")
        with self.state.lock:
            dataset = Dataset(owner, slug, title, True, "CC0-1.0")
            dataset.versions.append(Version(1, dict(files or {"x.bin": b"x"}), "Initial release", time.time(), 0))
            self.state.datasets[ref] = dataset
        return dataset

    def add_version(self, ref: str, files: dict[str, bytes], notes: str = "") -> Version:
        """A new ready version of ``ref`` holding exactly ``files`` (published elsewhere, e.g. by another run)."""
        with self.state.lock:
            versions = self.state.datasets[ref].versions
            version = Version(versions[-1].number + 1, dict(files), notes, time.time(), 0)
            versions.append(version)
        return version

    def delete_dataset(self, ref: str) -> None:
        """Delete ``ref``; like the real service, its slug stays "in use" for a new dataset."""
        with self.state.lock:
            del self.state.datasets[ref]
            self.state.deleted_refs.add(ref)

    def add_token(self, token: str, *, may_write: bool = True) -> None:
        """Accept another access token for the same user; one that may not write gets 403 on every create."""
        with self.state.lock:
            self.state.usernames_by_token[token] = self.username
            if not may_write:
                self.read_only_tokens.add(token)

    def refuse_credentials(self, refuse: bool = True) -> None:
        """Answer 401 to every authenticated RPC, and "inactive" to IntrospectToken (until called with ``False``)."""
        self._refusing = refuse
        self.state.refusing = refuse

    # -- introspection -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    def calls(self, rpc: str) -> list[RequestRecord]:
        """The logged requests of one RPC (or HTTP method, for ``"PUT"``/``"GET"``)."""
        return [r for r in self.requests if rpc in (r.rpc, r.method)]

    @property
    def datasets(self) -> dict[str, Dataset]:
        with self.state.lock:
            return dict(self.state.datasets)

    def versions(self, ref: str) -> list[Version]:
        """The versions of ``owner/slug``, oldest first (each with ``notes``, ``files``, ``bytes_uploaded``)."""
        with self.state.lock:
            return list(self.state.datasets[ref].versions)

    def uploaded_bytes(self, ref: str) -> dict[int, int]:
        """Bytes received by blob PUTs for each version of ``ref`` (retried PUTs count again)."""
        return {v.number: v.bytes_uploaded for v in self.versions(ref)}

    @property
    def total_uploaded(self) -> int:
        with self.state.lock:
            return sum(b.bytes_received for b in self.state.blobs.values())

    # -- internals -----------------------------------------------------------------------------------------

    def record_request(self, record: RequestRecord) -> RequestRecord:
        with self._log_lock:
            self._requests.append(record)
        return record

    def may_write(self, header: str | None) -> bool:
        """False for a read-only access token (``add_token(..., may_write=False)``)."""
        scheme, _, value = (header or "").partition(" ")
        return not (scheme.lower() == "bearer" and value.strip() in self.read_only_tokens)

    def user_for(self, header: str | None) -> str | None:
        """The user an ``Authorization`` header authenticates; None if missing, wrong or refused."""
        if self._refusing or not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.state.usernames_by_token.get(value.strip())
        if scheme.lower() == "basic":
            try:
                user, _, key = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return None
            return user if (user, key) == (self.username, self.key) else None
        return None
