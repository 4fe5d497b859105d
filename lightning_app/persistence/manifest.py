"""``manifest.json``: what each checkpoint holds, so one can be picked and verified without loading it.

The manifest sits beside the checkpoints and is rewritten atomically after every save::

    {"format": 1,
     "checkpoints": [{"file": "kaggle_epoch_2_20261126-031500.ckpt", "epoch": 2, "global_step": 96,
                      "timestamp": "20261126-031500", "size": 1234, "sha256": "...",
                      "metrics": {"val_loss": 1.39}, "settings": {"pe_type": "rope", ...}}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT = 1
CHECKPOINT_GLOB = "kaggle_epoch_*.ckpt"
_NAME_RE = re.compile(r"^kaggle_epoch_(?P<epoch>\d+)_(?P<timestamp>\d{8}-\d{6})(?:-(?P<seq>\d+))?\.ckpt$")


@dataclass
class CheckpointEntry:
    """One checkpoint file as the manifest describes it."""

    file: str
    epoch: int
    global_step: int
    timestamp: str
    size: int = 0
    sha256: str = ""
    end_of_epoch: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def order_key(self) -> tuple[int, int, str]:
        """Newest wins by global step, then epoch, then timestamp (the file name breaks exact ties)."""
        return (self.global_step, self.epoch, self.timestamp + "|" + self.file)

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointEntry:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def parse_checkpoint_name(name: str) -> tuple[int, str] | None:
    """``kaggle_epoch_3_20261126-031500.ckpt`` -> ``(3, "20261126-031500")``; None for other names."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    timestamp = match["timestamp"] + (f"-{int(match['seq']):02d}" if match["seq"] else "")
    return int(match["epoch"]), timestamp


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``.<name>.tmp`` beside the target, fsync, then ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manifest:
    """The entries of one checkpoint folder, keyed by file name."""

    def __init__(self, entries: list[CheckpointEntry] | None = None) -> None:
        self.entries: dict[str, CheckpointEntry] = {e.file: e for e in entries or []}

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest | None:
        """Read ``folder/manifest.json``; None when it is missing or unreadable (callers then scan files)."""
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            return cls([CheckpointEntry.from_dict(e) for e in data.get("checkpoints", [])])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        atomic_write_bytes(path, self.to_json().encode())
        return path

    def to_json(self) -> str:
        ordered = sorted(self.entries.values(), key=lambda e: e.order_key)
        return json.dumps({"format": FORMAT, "checkpoints": [asdict(e) for e in ordered]}, indent=2) + "\n"

    def add(self, entry: CheckpointEntry) -> None:
        self.entries[entry.file] = entry

    def discard(self, file: str) -> None:
        self.entries.pop(file, None)

    def newest_first(self) -> list[CheckpointEntry]:
        return sorted(self.entries.values(), key=lambda e: e.order_key, reverse=True)

    def subset(self, files: list[str]) -> Manifest:
        return Manifest([self.entries[f] for f in files if f in self.entries])


def settings_mismatch(saved: dict[str, object], requested: dict[str, object]) -> str | None:
    """The first setting that differs, as ``"pe_type: checkpoint has 'rope', this run asks for 'alibi'"``."""
    for key in sorted(set(saved) | set(requested)):
        if key in saved and key in requested and saved[key] != requested[key]:
            return f"{key}: checkpoint has {saved[key]!r}, this run asks for {requested[key]!r}"
    return None
