"""Non-blocking checkpoint writes: the caller waits only for a consistent copy of the state in host memory.

``SnapshotWriter.submit(state, path)`` copies every tensor of ``state`` into host buffers that are reused from
one save to the next (pinned memory for GPU tensors, so the copy is a fast DMA and needs no extra GPU memory),
then returns. A background thread serialises the copy with ``torch.save``, hashing the bytes as they are
written, writes ``.<name>.tmp`` beside the target, fsyncs and renames it into place, and reports the finished
file. At most one snapshot is in flight: a second ``submit`` first waits for the previous write, so the memory
this costs is bounded by one copy of the state in host RAM.
"""

from __future__ import annotations

import hashlib
import logging
import os
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


class _HashingWriter:
    """A file object for `torch.save` that hashes and counts the bytes on their way to disk."""

    def __init__(self, file) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def write_atomically(state: object, path: Path) -> WrittenFile:
    """`torch.save` to ``.<name>.tmp`` beside ``path``, fsync, rename: a reader never sees a torn file."""
    start = time.monotonic()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenFile(path, writer.size, writer.digest.hexdigest(), time.monotonic() - start)


class HostSnapshot:
    """Copies nested state (dicts, lists, tuples of tensors and plain values) into reused host buffers."""

    def __init__(self, pin_memory: bool | None = None) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._pin = pin_memory

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def copy(self, state: object) -> object:
        aliases: dict[tuple, torch.Tensor] = {}
        copied = self._copy(state, (), aliases)
        # The keys hold the source devices (the values are the host buffers, never on the GPU).
        if any(source_device.type == "cuda" for source_device, *_ in aliases):
            torch.cuda.synchronize()  # the non_blocking copies must land before the writer reads the buffers
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
        aliases[alias] = buffer
        return buffer


class SnapshotWriter:
    """Writes snapshots in one background thread; at most one snapshot is in flight.

    Args:
        on_written: called in the writer thread with each finished file.
        on_error: called in the writer thread when a write fails (disk full...); training carries on.
    """

    def __init__(
        self,
        on_written: Callable[[WrittenFile], None],
        on_error: Callable[[Path, BaseException], None],
    ) -> None:
        self._on_written, self._on_error = on_written, on_error
        self._snapshot = HostSnapshot()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self.last_blocked_seconds = 0.0

    def submit(self, state: object, path: str | os.PathLike) -> None:
        """Copy ``state`` to host memory (the only part the caller waits for) and write it in the background."""
        start = time.monotonic()
        self.wait()  # one snapshot in flight: its buffers are about to be reused
        copied = self._snapshot.copy(state)
        self._idle.clear()
        self._thread = threading.Thread(target=self._write, args=(copied, Path(path)), name="ckpt-writer")
        self._thread.start()
        self.last_blocked_seconds = time.monotonic() - start

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pending write (if any) is on disk; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def _write(self, state: object, path: Path) -> None:
        try:
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
