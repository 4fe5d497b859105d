"""Real text as byte-level tokens (vocabulary of 256, no tokenizer files), memory-mapped, never loaded whole.

``path`` names a file, a folder (every regular file under it, recursively, in sorted order, hidden ones
skipped) or a glob. A single file is memory-mapped as it is. Several files are concatenated once, in 16 MiB
chunks, into a cache file named by a hash of their paths, sizes and modification times, written beside its
final name and moved into place with ``os.replace`` (a crash never leaves a half-written cache under the final
name); later runs map the cache directly. The cache is built in ``prepare_data`` (once per node, before the
other ranks go on) or, failing that, when the data is first needed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from typing_extensions import override

from lightning_app.atomic import atomic_file
from lightning_app.data.datamodule import TokenWindowDataModule
from lightning_app.data.windows import TokenWindows
from lightning_app.errors import ConfigError, bad_value

DEFAULT_CACHE_DIR = "~/.cache/lightning_app/tokens"
_CHUNK = 16 << 20
_PATH_ACCEPTED = "an existing file, folder or glob of text files"


def _files_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root, name) for name in names if not name.startswith(".") and Path(root, name).is_file())
    return found


def find_text_files(path: str) -> list[Path]:
    """The files that ``path`` names, sorted; raises the ``--data.path`` ConfigError if there are none.

    Args:
        path: a file, a folder (searched recursively, hidden entries skipped) or a glob (``**`` allowed).
    """
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        return [Path(expanded).resolve()]
    if os.path.isdir(expanded):
        files = _files_under(Path(expanded))
    elif glob.has_magic(expanded):
        files = []
        for match in glob.glob(expanded, recursive=True):
            if os.path.isdir(match):
                files.extend(_files_under(Path(match)))
            elif os.path.isfile(match):
                files.append(Path(match))
    else:
        raise bad_value("--data.path", path, _PATH_ACCEPTED)
    if not files:
        raise bad_value("--data.path", path, _PATH_ACCEPTED + " (found no files there)")
    ordered = [file.resolve() for file in sorted(files, key=str)]  # sorted as named, not as links resolve
    return list(dict.fromkeys(ordered))


class TextDataModule(TokenWindowDataModule):
    """Byte-level language modelling on your own text files.

    The byte stream is cut into windows of ``seq_len + 1`` tokens at stride ``seq_len``; the last
    ``val_fraction`` of the windows (a contiguous tail, at least one window) is held out for validation and
    the rest is trained on.

    Example::

        dm = TextDataModule("/kaggle/input/my-corpus/*.txt", seq_len=256)
        dm.num_train_batches()  # per epoch, on one device

    Args:
        path: a text file, a folder of text files (recursive, hidden files skipped) or a glob such as
            ``/kaggle/input/my-corpus/*.txt``.
        seq_len: tokens (bytes) per training input.
        batch_size: windows per canonical micro-batch (per device when the devices are as many as the canonical
            ranks); the global batch is ``canonical_ranks x batch_size x accumulate_grad_batches``.
        val_fraction: share of the windows held out for validation, taken from the end of the text.
        seed: seed of the training order.
        num_workers: data-loading worker processes (0 loads in the main process).
        cache_dir: where several files are concatenated once (default ``~/.cache/lightning_app/tokens``).
        canonical_ranks: the run's canonical data-parallel width, fixed at its start so that a resume on another
            number of devices takes the same samples per step (see `lightning_app.data.canonical`).
    """

    vocab_size = 256

    def __init__(
        self,
        path: str,
        seq_len: int = 256,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 1234,
        num_workers: int = 2,
        cache_dir: str | None = None,
        canonical_ranks: int = 2,
    ) -> None:
        super().__init__(
            seq_len=seq_len, batch_size=batch_size, seed=seed, num_workers=num_workers, canonical_ranks=canonical_ranks
        )
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise bad_value("--data.val_fraction", val_fraction, "a number in (0, 1), exclusive")
        self.path = path
        self.val_fraction = float(val_fraction)
        self.files = find_text_files(path)
        stats = [file.stat() for file in self.files]
        self.num_tokens = sum(stat.st_size for stat in stats)
        needed = 2 * seq_len + 1
        if self.num_tokens == 0:
            empty = f"{_PATH_ACCEPTED} holding text; its {len(self.files)} file(s) are empty"
            raise bad_value("--data.path", path, empty)
        if self.num_tokens < needed:
            raise bad_value(
                "--data.path",
                path,
                f"text of at least {needed} bytes (one training and one validation window at --data.seq_len "
                f"{seq_len}); found {self.num_tokens}",
            )
        windows = (self.num_tokens - 1) // seq_len
        self.num_val_windows = min(windows - 1, max(1, int(windows * self.val_fraction)))
        self.num_train_windows = windows - self.num_val_windows
        if self.num_train_windows < batch_size:
            raise bad_value(
                "--data.batch_size",
                batch_size,
                f"at most {self.num_train_windows}, the training windows of --data.path at --data.seq_len {seq_len}",
            )
        self.cache_dir = Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
        fingerprint = json.dumps([[str(f), s.st_size, s.st_mtime_ns] for f, s in zip(self.files, stats)])
        self._cache_name = hashlib.sha256(fingerprint.encode()).hexdigest()[:24] + ".u8"

    @property
    def tokens_path(self) -> Path:
        """The file that is memory-mapped: the input itself, or the cache of the concatenated inputs."""
        return self.files[0] if len(self.files) == 1 else self.cache_dir / self._cache_name

    def identity(self) -> dict[str, Any]:
        """Class name, resolved path, total size, window length and held-out share (not modification times)."""
        expanded = os.path.expanduser(self.path)
        resolved = str(Path(expanded).resolve()) if os.path.exists(expanded) else os.path.abspath(expanded)
        return {
            "class": type(self).__name__,
            "path": resolved,
            "num_bytes": self.num_tokens,
            "seq_len": self.seq_len,
            "val_fraction": self.val_fraction,
        }

    @override
    def prepare_data(self) -> None:
        """Build the concatenation cache (Lightning calls this on one process per node, then waits)."""
        self._ensure_tokens_file()

    def _ensure_tokens_file(self) -> Path:
        target = self.tokens_path
        if len(self.files) == 1 or (target.is_file() and target.stat().st_size == self.num_tokens):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as out:
            for file in self.files:
                with open(file, "rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
            if out.tell() != self.num_tokens:
                raise ConfigError(f"--data.path: the files under {self.path!r} changed while being read; run again")
        return target

    def _build_datasets(self) -> tuple[TokenWindows, TokenWindows]:
        path = self._ensure_tokens_file()
        windows = {"seq_len": self.seq_len, "stride": self.seq_len}
        train = TokenWindows(path, first=0, count=self.num_train_windows, **windows)
        val = TokenWindows(path, first=self.num_train_windows, count=self.num_val_windows, **windows)
        return train, val
