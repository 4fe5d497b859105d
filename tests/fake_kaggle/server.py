"""A fake Kaggle API on 127.0.0.1 that the real ``kaggle`` client (>= 1.7, kagglesdk wire protocol) talks to.

Standard library only: a ``ThreadingHTTPServer`` on a free port in a daemon thread. It answers
``POST /api/v1/<service>/<Method>`` RPCs (see ``state.py``), blob uploads (``PUT /upload/<token>``) and zip
downloads (``GET /download/<owner>/<slug>/<n>/<slug>.zip``, reached by the 302 of DownloadDataset).

Example::

    with FakeKaggle() as fake:
        env = fake.env(tmp_path)          # for subprocesses: {**os.environ, **env}
        fake.fail_next(1, status=500, methods="CreateDatasetVersion")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tests.fake_kaggle.faults import Fault, FaultPlan, as_methods
from tests.fake_kaggle.state import Dataset, FakeState, Reply, Version, error

#: Prepended to PYTHONPATH by ``env()``: its sitecustomize.py points kagglesdk at FAKE_KAGGLE_URL.
SITE_DIR = Path(__file__).resolve().parent / "site"

#: Variables a developer's shell may hold that would steer the client away from the fake's credentials.
UNSET_VARS = ("KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL")


@dataclass
class RequestRecord:
    """One request as the fake saw it. ``status`` is None for a dropped or hung request."""

    method: str
    path: str
    rpc: str | None
    has_auth: bool
    body_size: int
    body: bytes
    status: int | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep pytest output clean; the fake keeps its own request log

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        path = urlsplit(self.path).path
        rpc = path.rsplit("/", 1)[-1] if path.startswith("/api/v1/") else None
        record = fake._log(RequestRecord(self.command, path, rpc, "Authorization" in self.headers, len(body), body))
        fault = fake.faults.take({self.command} | ({rpc} if rpc else set()))
        if fault is not None and not fault.after_commit:
            self._apply(fault, record)
            return
        reply = self._route(path, rpc, body)
        if fault is not None:
            self._apply(fault, record)
            return
        record.status = reply.status
        self._send(reply)

    def _apply(self, fault: Fault, record: RequestRecord) -> None:
        if fault.action == "fail":
            record.status = fault.status
            self._send(error(fault.status, fault.message or f"injected HTTP {fault.status}"))
            return
        if fault.action == "hang":
            self.server.fake.faults.hold(self.server.fake.hang_limit)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _route(self, path: str, rpc: str | None, body: bytes) -> Reply:
        fake = self.server.fake
        parts = path.strip("/").split("/")
        if self.command == "POST" and rpc is not None:
            user = fake._authenticate(self.headers.get("Authorization"))
            if user is None and rpc != "IntrospectToken":
                return error(401, "Unauthenticated: missing or invalid credentials")
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return error(400, "request body is not JSON")
            return fake.state.rpc(rpc, user, data)
        if self.command == "PUT" and len(parts) == 2 and parts[0] == "upload":
            return Reply(fake.state.put_blob(parts[1], body, self.headers.get("Content-Range")), {})
        if self.command == "GET" and len(parts) == 5 and parts[0] == "download" and parts[3].isdigit():
            found = fake.state.version_zip(parts[1], parts[2], int(parts[3]))
            if found is not None:
                data, created = found
                headers = {"Content-Type": "application/zip", "Last-Modified": formatdate(created, usegmt=True)}
                return Reply(200, None, headers, data)
        return error(404, f"no route for {self.command} {path}")

    def _send(self, reply: Reply) -> None:
        payload = reply.raw if reply.raw is not None else b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = {"Content-Type": "application/json", **reply.headers, "Content-Length": str(len(payload))}
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for start in range(0, len(payload), 1 << 16):  # streamed in chunks, like a large download
            self.wfile.write(payload[start : start + (1 << 16)])

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKaggle


class FakeKaggle:
    """The fake Kaggle API server, its accepted credentials, fault injection and introspection.

    Args:
        username: the one accepted user (owner of the datasets it creates).
        key: the accepted API key (Basic auth); random by default, so a test can search for it in any byte.
        token: the accepted access token (Bearer auth, IntrospectToken).
        hang_limit: longest time (s) a hung request is held when nobody calls ``release()``.
    """

    def __init__(
        self, *, username: str = "fake-user", key: str | None = None, token: str | None = None, hang_limit=30.0
    ) -> None:
        self.username = username
        self.key = key or "fake-key-" + secrets.token_hex(16)
        self.token = token or "KGAT_fake_" + secrets.token_hex(16)
        self.hang_limit = hang_limit
        self.faults = FaultPlan()
        self.state = FakeState("http://127.0.0.1:0")
        self._refusing = False
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> FakeKaggle:
        server = _Server(("127.0.0.1", 0), _Handler)
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
    ) -> None:
        """Answer the next ``n`` matching requests with HTTP ``status`` (e.g. 500, 429, 403)."""
        self.faults.add(Fault("fail", n, as_methods(methods), status, message, after_commit))

    def hang_next(self, n: int = 1, methods: str | Iterable[str] | None = None, *, after_commit=False) -> None:
        """Hold the next ``n`` matching requests until ``release()``/``stop()``/``hang_limit``, then drop them."""
        self.faults.add(Fault("hang", n, as_methods(methods), after_commit=after_commit))

    def drop_next(self, n: int = 1, methods: str | Iterable[str] | None = None, *, after_commit=False) -> None:
        """Close the socket of the next ``n`` matching requests with no response.

        With ``after_commit=True`` the request takes effect first: a reply lost after the server committed.
        """
        self.faults.add(Fault("drop", n, as_methods(methods), after_commit=after_commit))

    def release(self) -> None:
        """Let hung requests go (each is then dropped)."""
        self.faults.release()

    def processing_delay(self, k: int) -> None:
        """Versions created from now on answer "pending" to their next ``k`` status queries (0: ready at once)."""
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        with self.state.lock:
            self.state.processing_delay = k

    def lose_next_upload(self, *names: str) -> None:
        """Leave ``names`` out of the next version although they were uploaded (what kaggle 1.6 can do)."""
        with self.state.lock:
            self.state.lose_from_next_version = set(names)

    def refuse_credentials(self, refuse: bool = True) -> None:
        """Answer 401 to every authenticated RPC (until called with ``False``)."""
        self._refusing = refuse

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

    def _log(self, record: RequestRecord) -> RequestRecord:
        with self._log_lock:
            self._requests.append(record)
        return record

    def _authenticate(self, header: str | None) -> str | None:
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
