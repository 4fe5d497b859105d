"""HTTP plumbing of the fake Kaggle server: read a request, log it, apply a fault, route it, send the reply.

Routes: ``POST /api/v1/<service>/<Method>`` (RPCs, authenticated except IntrospectToken), ``PUT /upload/<token>``
(blob bytes, no auth, like a signed URL) and ``GET /download/...`` (the targets of DownloadDataset's 302, no auth,
with Content-Length, Last-Modified and byte ranges; ``downloads.py``).
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tests.fake_kaggle.faults import Fault
from tests.fake_kaggle.replies import Reply, error

if TYPE_CHECKING:
    from tests.fake_kaggle.server import FakeKaggle


#: RPCs that create something, and the permission a read-only token is refused.
WRITE_RPCS = {
    "CreateDataset": "datasets.create",
    "CreateDatasetVersion": "datasets.create",
    "CreateDatasetVersionById": "datasets.create",
    "SaveKernel": "kernels.create",
}


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


class Handler(BaseHTTPRequestHandler):
    """One connection; keep-alive (HTTP/1.1) like the real API, so a drop hits a reused connection too."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # keep pytest output clean; the fake keeps its own request log

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        path = urlsplit(self.path).path
        rpc = path.rsplit("/", 1)[-1] if path.startswith("/api/v1/") else None
        has_auth = "Authorization" in self.headers
        record = fake.record_request(RequestRecord(self.command, path, rpc, has_auth, len(body), body))
        fault = fake.faults.take({self.command} | ({rpc} if rpc else set()))
        if fault is not None and not fault.after_commit:
            self._apply(fault, record)
            return
        reply = self._route(path, rpc, body)
        if fault is not None and fault.action == "cut":
            record.status = reply.status
            self._send(reply, cut=True)
            return
        if fault is not None:
            self._apply(fault, record)
            return
        record.status = reply.status
        self._send(reply)

    def _apply(self, fault: Fault, record: RequestRecord) -> None:
        if fault.action == "fail":
            record.status = fault.status
            message = fault.message or f"injected HTTP {fault.status}"
            reply = error(fault.status, message)
            if fault.retry_after is not None:  # the real 429 shape (kaggle-api #931)
                body = {"error": {"code": fault.status, "status": "RESOURCE_EXHAUSTED", "message": message}}
                reply = Reply(fault.status, body, {"Retry-After": f"{fault.retry_after:g}"})
            self._send(reply)
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
            user = fake.user_for(self.headers.get("Authorization"))
            if user is None and rpc != "IntrospectToken":
                return error(401, "Unauthenticated: missing or invalid credentials")
            if rpc in WRITE_RPCS and not fake.may_write(self.headers.get("Authorization")):
                return error(403, f"Permission '{WRITE_RPCS[rpc]}' was denied for {user}")
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return error(400, "request body is not JSON")
            return fake.state.rpc(rpc, user, data)
        if self.command == "PUT" and len(parts) == 2 and parts[0] == "upload":
            return Reply(fake.state.put_blob(parts[1], body, self.headers.get("Content-Range")), {})
        if self.command == "GET" and parts[0] == "download":
            found = fake.state.download(parts, self.headers.get("Range"), self.headers.get("If-Range"))
            if found is not None:
                return found
        return error(404, f"no route for {self.command} {path}")

    def _send(self, reply: Reply, cut: bool = False) -> None:
        """Send ``reply``; with ``cut``, only its first half, then close the connection."""
        payload = reply.raw if reply.raw is not None else b"" if reply.body is None else json.dumps(reply.body).encode()
        headers = {"Content-Type": "application/json", **reply.headers, "Content-Length": str(len(payload))}
        self.send_response(reply.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        end = len(payload) // 2 if cut else len(payload)
        for start in range(0, end, 1 << 16):  # streamed in chunks, like a large download
            self.wfile.write(payload[start : min(end, start + (1 << 16))])
        if cut:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

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


class Server(ThreadingHTTPServer):
    """A thread per connection; ``fake`` is the ``FakeKaggle`` that owns the state."""

    daemon_threads = True
    fake: FakeKaggle
