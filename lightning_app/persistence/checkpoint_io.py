"""A CheckpointIO plugin that hands each save to a `SnapshotWriter` instead of writing it inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from lightning_app.persistence.snapshot import SnapshotWriter


class SnapshotCheckpointIO(TorchCheckpointIO):
    """Saves return once the state is copied to host memory; loading is Lightning's own.

    Installed by `KaggleModelCheckpoint` in place of the default `TorchCheckpointIO`.
    """

    def __init__(self, writer: SnapshotWriter) -> None:
        super().__init__()
        self.writer = writer

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.writer.submit(checkpoint, path)

    @override
    def remove_checkpoint(self, path) -> None:
        self.writer.wait()
        super().remove_checkpoint(path)

    @override
    def teardown(self) -> None:
        self.writer.wait()
