"""What the fake's download URLs serve: a version's zip, one file, or one file wrapped in a zip.

DownloadDataset answers 302 to a signed storage URL (``?X-Goog-...``), as the real service does; the client names
the local file after that URL's last path segment, so a wrapped file arrives as ``<name>.zip`` and nothing else
tells the client it was wrapped (kaggle 2.2.5 ``_resolve_download_path``). Routes (under ``/download/``)::

    <owner>/<slug>/<n>/<slug>.zip            every file of version n (no fileName)
    <owner>/<slug>/<n>/files/<name>          one file, as it is
    <owner>/<slug>/<n>/compressed/<name>.zip one file wrapped in a zip (files above the wrap threshold)

Like storage, every answer carries ``Accept-Ranges: bytes``, ``ETag`` and ``Last-Modified``, and honours
``Range: bytes=N-`` (206) with ``If-Range`` (a changed object answers 200 in full), which kaggle 2.2.5 uses to
resume a download inside its own retry loop.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
import zipfile
from email.utils import formatdate
from urllib.parse import quote, unquote

from tests.fake_kaggle.replies import Reply, error

#: The path segment of a single file as it is, and of a single file wrapped in a zip.
AS_IS = "files"
WRAPPED = "compressed"


def zip_of(files: dict[str, bytes], created: float) -> bytes:
    """A deflated zip holding ``files`` (names as given), dated ``created`` (zip dates start in 1980)."""
    buffer = io.BytesIO()
    stamp = time.gmtime(max(created, 315532800))[:6]
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(zipfile.ZipInfo(name, stamp), files[name], zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def file_url(base_url: str, ref: str, number: int, name: str, wrapped: bool) -> str:
    """The signed storage URL one file of a version is served from (the 302 target of DownloadDataset)."""
    kind, suffix = (WRAPPED, ".zip") if wrapped else (AS_IS, "")
    query = f"X-Goog-Expires=3600&X-Goog-Signature={secrets.token_hex(8)}"  # the client must cut it off
    return f"{base_url}/download/{ref}/{number}/{kind}/{quote(name)}{suffix}?{query}"


def parse_file_path(parts: list[str]) -> tuple[str, str, int, str, bool] | None:
    """``(owner, slug, number, name, wrapped)`` of a single-file download path's parts; None if it is not one."""
    if len(parts) != 6 or parts[0] != "download" or not parts[3].isdigit() or parts[4] not in (AS_IS, WRAPPED):
        return None
    name = unquote(parts[5])
    wrapped = parts[4] == WRAPPED
    if wrapped:
        if not name.endswith(".zip"):
            return None
        name = name[: -len(".zip")]
    return parts[1], parts[2], int(parts[3]), name, wrapped


def serve(data: bytes, modified: float, content_type: str, range_header: str | None, if_range: str | None) -> Reply:
    """``data`` as storage serves it: whole (200), or from byte N on for ``Range: bytes=N-`` (206, or 416)."""
    last_modified = formatdate(modified, usegmt=True)
    etag = '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - an object identity, not security
    headers = {"Content-Type": content_type, "Last-Modified": last_modified, "ETag": etag, "Accept-Ranges": "bytes"}
    start = _range_start(range_header)
    if start is None or (if_range is not None and if_range not in (etag, last_modified)):
        return Reply(200, None, headers, data)  # no range, or the object changed since the partial copy
    if start >= len(data):
        reply = error(416, f"range start {start} is past the end ({len(data)} bytes)")
        return Reply(reply.status, reply.body, {"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    return Reply(206, None, headers, data[start:])


def _range_start(header: str | None) -> int | None:
    """N of ``bytes=N-``; None for no header or any other form (answered in full, as storage may)."""
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    value = header[len("bytes=") : -1]
    return int(value) if value.isdigit() else None
