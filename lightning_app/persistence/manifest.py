"""``manifest.json``: what each checkpoint holds, so one can be picked and verified without loading it.

The manifest sits beside the checkpoints (``folder.py`` reads and writes it, atomically, after every save)::

    {"format": 1,
     "checkpoints": [{"file": "kaggle_epoch_2_20261126-031500.ckpt", "epoch": 2, "global_step": 96,
                      "timestamp": "20261126-031500", "written_at": 1795662900.412, "size": 1234, "sha256": "...",
                      "run_id": "3f2a9c01d4e5", "metrics": {"val_loss": 1.39},
                      "settings": {"pe_type": "rope", ...}}],
     "retired": ["kaggle_epoch_0_20261126-011500.ckpt"]}

``run_id`` names the run a checkpoint belongs to (given when a run starts fresh, kept across resumes);
``retired`` lists the names retention deleted, so that no later checkpoint in the folder is given one of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

FORMAT = 1


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
    run_id: str = ""  # empty for checkpoints written before runs had ids
    training: dict[str, object] = field(default_factory=dict)  # the resolved training settings of the run
    best: bool = False  # the run's best by ``--checkpoint.monitor``: kept by retention
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    total_steps: int = 0  # the step the run's schedule ends at: the run is finished there (0: not known)
    written_at: float = 0.0  # when it was saved (UTC epoch seconds); 0: before entries had it, the name's second

    @property
    def is_final(self) -> bool:
        """Whether it is the checkpoint at its run's schedule's end: the run is finished."""
        return self.total_steps > 0 and self.global_step >= self.total_steps

    @property
    def written(self) -> float:
        """When it was saved, UTC epoch seconds: ``written_at``, else its name's second (0.0 when unreadable)."""
        return self.written_at or stamp_seconds(self.timestamp)

    @property
    def order_key(self) -> tuple[float, int, str]:
        """Newest is the most recently written (a run resumed from an older checkpoint goes on from there), then
        the higher step; the timestamp's ``-NN`` suffix and the file name break exact ties."""
        return (self.written, self.global_step, self.timestamp + "|" + self.file)

    @classmethod
    def from_dict(cls, data: dict) -> CheckpointEntry:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def stamp_seconds(timestamp: str) -> float:
    """A checkpoint name's timestamp (``20261126-031500``, maybe with a ``-NN`` suffix) as UTC epoch seconds; 0.0
    when it is not one."""
    try:
        return datetime.strptime(timestamp[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


class Manifest:
    """The entries of one checkpoint folder, keyed by file name."""

    def __init__(self, entries: list[CheckpointEntry] | None = None, retired: set[str] | None = None) -> None:
        self.entries: dict[str, CheckpointEntry] = {e.file: e for e in entries or []}
        self.retired: set[str] = set(retired or ())

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        entries = [CheckpointEntry.from_dict(e) for e in data.get("checkpoints", [])]
        return cls(entries, set(data.get("retired", [])))

    def to_json(self) -> str:
        ordered = sorted(self.entries.values(), key=lambda e: e.order_key)
        data = {"format": FORMAT, "checkpoints": [asdict(e) for e in ordered], "retired": sorted(self.retired)}
        return json.dumps(data, indent=2) + "\n"

    def add(self, entry: CheckpointEntry) -> None:
        self.entries[entry.file] = entry

    def discard(self, file: str) -> None:
        """Forget ``file`` (its checkpoint was deleted); its name is never given to another checkpoint here."""
        if self.entries.pop(file, None) is not None:
            self.retired.add(file)

    def best(self) -> CheckpointEntry | None:
        """The newest entry marked best (a folder with several runs has one per run)."""
        return next((e for e in self.newest_first() if e.best), None)

    def ever_held(self, file: str) -> bool:
        return file in self.entries or file in self.retired

    def newest_first(self, run_id: str | None = None) -> list[CheckpointEntry]:
        """Entries newest first; only those of run ``run_id`` when given."""
        entries = [e for e in self.entries.values() if run_id is None or e.run_id == run_id]
        return sorted(entries, key=lambda e: e.order_key, reverse=True)

    def subset(self, files: list[str]) -> Manifest:
        return Manifest([self.entries[f] for f in files if f in self.entries])


#: Settings whose change the resumed run reports in a line of its own (the data-parallel layout's).
_SAID_ELSEWHERE = frozenset({"trainer.world_size"})


def training_differences(saved: dict[str, object], requested: dict[str, object]) -> str:
    """``"model.lr 0.0003 -> 0.001, data.batch_size 8 -> 16"``: the settings both name with different values."""
    shared = (set(saved) & set(requested)) - _SAID_ELSEWHERE
    changed = [k for k in sorted(shared) if saved[k] != requested[k]]
    return ", ".join(f"{k} {saved[k]!r} -> {requested[k]!r}" for k in changed)
