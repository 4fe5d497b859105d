"""Lightning callbacks that glue the Trainer's hooks to `lightning_app.persistence`."""

from callbacks.checkpoint import KaggleModelCheckpoint, SavedCheckpoint

__all__ = ["KaggleModelCheckpoint", "SavedCheckpoint"]
