"""Data for the language models: synthetic Markov sequences (default) or your own text, resumable mid-epoch."""

from lightning_app.data.datamodule import TokenWindowDataModule
from lightning_app.data.loader import ResumableDataLoader
from lightning_app.data.sampler import ResumableSampler, derive_seed
from lightning_app.data.synthetic import SyntheticDataModule
from lightning_app.data.text import TextDataModule, find_text_files
from lightning_app.data.windows import TokenWindows

__all__ = [
    "ResumableDataLoader",
    "ResumableSampler",
    "SyntheticDataModule",
    "TextDataModule",
    "TokenWindowDataModule",
    "TokenWindows",
    "derive_seed",
    "find_text_files",
]
