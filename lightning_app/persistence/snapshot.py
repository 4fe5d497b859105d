"""Non-blocking checkpoint writes: the caller waits only for a consistent copy of the state in host memory.

``SnapshotWriter.submit(state, path)`` copies every tensor of ``state`` into host buffers that are reused from
one save to the next, then returns. GPU tensors go to pinned buffers on a side stream, ordered after the work
already queued on the training stream: the caller does not wait for them at all, and the next optimizer step
waits (on the GPU, not the host) only if the copy is not done by then (``before_optimizer_step``). CPU tensors
are copied inline. A background thread at low priority then writes the copy with torch's own file writer into
``.<name>.tmp/archive``, fsyncs it, hashes it in large chunks, and renames it into place. At most one snapshot is
in flight: a second ``submit`` first waits for the previous write, so the memory this costs is bounded by one
copy of the state in host RAM, and no GPU memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str
    seconds: float


#: How much lower than training the writer thread runs (Linux gives every thread its own nice value).
WRITER_NICENESS = 10
_CHUNK = 1 << 24


def lower_thread_priority(niceness: int = WRITER_NICENESS) -> None:
    """Make the calling thread yield the CPU to training threads (Linux; a no-op where it is not possible)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except (AttributeError, OSError):
        pass


def _sync_and_hash(path: Path) -> tuple[int, str]:
    """fsync ``path`` and hash it in large chunks (hashlib and reads release the GIL; the pages are cached)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        os.fsync(f.fileno())
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_atomically(state: object, path: Path) -> WrittenFile:
    """`torch.save` into ``.<name>.tmp/archive`` beside ``path``, fsync, hash, rename: a reader never sees a torn
    file. torch's file writer names the zip's root folder after the file, so the file is called ``archive``:
    the bytes are exactly those `torch.save` writes into a buffer."""
    start = time.monotonic()
    scratch = path.with_name(f".{path.name}.tmp")
    try:
        scratch.mkdir(exist_ok=True)
        torch.save(state, str(scratch / "archive"))
        size, sha256 = _sync_and_hash(scratch / "archive")
        os.replace(scratch / "archive", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return WrittenFile(path, size, sha256, time.monotonic() - start)


class HostSnapshot:
    """Copies nested state (dicts, lists, tuples of tensors and plain values) into reused host buffers."""

    def __init__(self, pin_memory: bool | None = None) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._pin = pin_memory
        self._stream: torch.cuda.Stream | None = None
        #: Recorded on the side stream after the last copy from a GPU; None when it had no GPU tensors.
        self.copied: torch.cuda.Event | None = None

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def copy(self, state: object) -> object:
        """Host copies of ``state``'s tensors; those from a GPU are in flight until ``copied`` has happened."""
        aliases: dict[tuple, torch.Tensor] = {}
        self.copied = None
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return self._copy(state, (), aliases)
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())  # after the step that produced this state
        with torch.cuda.stream(self._stream):
            copied = self._copy(state, (), aliases)
        if any(source_device.type == "cuda" for source_device, *_ in aliases):  # the keys hold source devices
            self.copied = torch.cuda.Event()
            self.copied.record(self._stream)
        return copied

    def _copy(self, obj: object, key: tuple, aliases: dict) -> object:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, key, aliases)
        if isinstance(obj, dict):
            return {k: self._copy(v, (*key, k), aliases) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [self._copy(v, (*key, i), aliases) for i, v in enumerate(obj)]
            return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)
        return obj  # plain values are built fresh by Lightning for every save; nothing live to copy

    def _copy_tensor(self, tensor: torch.Tensor, key: tuple, aliases: dict) -> torch.Tensor:
        # Tied weights share storage: keep one copy, so the file stays as small as `torch.save` makes it.
        alias = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tensor.shape,
            tensor.stride(),
            tensor.dtype,
        )
        if alias in aliases:
            return aliases[alias]
        source = tensor.detach()
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            pin = self._pin if self._pin is not None else source.is_cuda
            buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu", pin_memory=pin)
            self._buffers[key] = buffer
        buffer.copy_(source, non_blocking=source.is_cuda)
        if source.is_cuda:  # a temporary freed meanwhile must not be reused before the side stream has read it
            source.record_stream(torch.cuda.current_stream())
        aliases[alias] = buffer
        return buffer


class SnapshotWriter:
    """Writes snapshots in one background thread; at most one snapshot is in flight.

    Args:
        on_written: called in the writer thread with each finished file.
        on_error: called in the writer thread when a write fails for good; training carries on.
        make_room: called in the writer thread when a write fails, with the path, the error and the snapshot's
            size; True when it made room (a full disk) and the write is worth one more try.
    """

    def __init__(
        self,
        on_written: Callable[[WrittenFile], None],
        on_error: Callable[[Path, BaseException], None],
        make_room: Callable[[Path, BaseException, int], bool] | None = None,
    ) -> None:
        self._on_written, self._on_error, self._make_room = on_written, on_error, make_room
        self._snapshot = HostSnapshot()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._copied: torch.cuda.Event | None = None
        self.last_blocked_seconds = 0.0

    def submit(self, state: object, path: str | os.PathLike) -> None:
        """Copy ``state`` to host memory (the only part the caller waits for) and write it in the background."""
        start = time.monotonic()
        self.wait()  # one snapshot in flight: its buffers are about to be reused
        copied = self._snapshot.copy(state)
        self._copied = self._snapshot.copied
        self._idle.clear()
        args = (copied, Path(path), self._copied)
        self._thread = threading.Thread(target=self._write, args=args, name="ckpt-writer")
        self._thread.start()
        self.last_blocked_seconds = time.monotonic() - start

    def before_optimizer_step(self) -> None:
        """The weights are about to change: the training stream waits (on the GPU) for a copy still in flight."""
        if self._copied is not None:
            if not self._copied.query():
                torch.cuda.current_stream().wait_event(self._copied)
            self._copied = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the write being made (if any) is on disk; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    @property
    def snapshot_bytes(self) -> int:
        """The size of the state last copied (about what its file needs on disk)."""
        return self._snapshot.nbytes

    def _write(self, state: object, path: Path, copied: torch.cuda.Event | None) -> None:
        lower_thread_priority()
        try:
            if copied is not None:
                copied.synchronize()
            try:
                written = write_atomically(state, path)
            except Exception as error:  # noqa: BLE001 - a full disk may be made room on, once
                if self._make_room is None or not self._make_room(path, error, self.snapshot_bytes):
                    raise
                written = write_atomically(state, path)
        except BaseException as error:  # noqa: BLE001 - reported, never raised into training
            self._report(self._on_error, path, error)
        else:
            self._report(self._on_written, written)
        finally:
            self._idle.set()

    @staticmethod
    def _report(fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001
            log.exception("checkpoint listener failed")
