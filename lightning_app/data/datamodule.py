"""`TokenWindowDataModule`: the base of the data modules, with loaders that resume exactly."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_app.data.checks import check_int
from lightning_app.data.loader import ResumableDataLoader
from lightning_app.data.sampler import ResumableSampler, derive_seed
from lightning_app.data.windows import TokenWindows
from lightning_app.errors import bad_value


class TokenWindowDataModule(pl.LightningDataModule):
    """Base of the data modules: loaders that resume exactly, sharded across ranks by their own sampler.

    The Trainer runs with ``use_distributed_sampler=False``: Lightning leaves our loaders alone and the
    :class:`ResumableSampler` shards them. Subclasses set ``vocab_size``, ``seq_len`` and
    ``num_train_windows`` in ``__init__`` and implement :meth:`_build_datasets` and :meth:`identity`.

    Args:
        seq_len: tokens per training input.
        batch_size: windows per batch and per rank.
        seed: seed of the training order (each epoch's order is a function of it and the epoch).
        num_workers: data-loading worker processes (0 loads in the main process).
    """

    vocab_size: int
    num_train_windows: int

    def __init__(self, *, seq_len: int, batch_size: int, seed: int, num_workers: int) -> None:
        super().__init__()
        self.seq_len = check_int("--data.seq_len", seq_len, 1)
        self.batch_size = check_int("--data.batch_size", batch_size, 1)
        self.num_workers = check_int("--data.num_workers", num_workers, 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_value("--data.seed", seed, "an integer")
        self.seed = seed
        self._datasets: tuple[TokenWindows, TokenWindows] | None = None

    def _build_datasets(self) -> tuple[TokenWindows, TokenWindows]:
        """Build the (train, val) datasets; called once, lazily."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Plain-typed settings that identify the data: class name and what generates or locates it."""
        raise NotImplementedError

    def num_train_batches(self, world_size: int = 1) -> int:
        """Training batches per epoch on each rank: pure arithmetic, no loader is built.

        Args:
            world_size: number of ranks sharing the data.
        """
        return (self.num_train_windows // world_size) // self.batch_size

    @property
    def train_dataset(self) -> TokenWindows:
        return self._get_datasets()[0]

    @property
    def val_dataset(self) -> TokenWindows:
        return self._get_datasets()[1]

    def _get_datasets(self) -> tuple[TokenWindows, TokenWindows]:
        if self._datasets is None:
            self._datasets = self._build_datasets()
        return self._datasets

    @override
    def setup(self, stage: str) -> None:
        self._get_datasets()

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader_kwargs(self, purpose: str) -> dict[str, Any]:
        trainer = self.trainer
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            # Only for a CUDA trainer; asking torch.cuda would not initialise CUDA but pinning needs a GPU anyway.
            "pin_memory": trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator),
            # Each loader draws its worker seeds from its own generator, never from the global torch RNG.
            "generator": torch.Generator().manual_seed(derive_seed(self.seed, "loader", purpose)),
        }

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        world_size, rank = self._world()
        if self.num_train_batches(world_size) < 1:
            raise bad_value(
                "--data.batch_size",
                self.batch_size,
                f"at most {self.num_train_windows // world_size}, the training windows per device "
                f"({self.num_train_windows} windows over {world_size} devices)",
            )
        dataset = self.train_dataset
        sampler = ResumableSampler(len(dataset), seed=self.seed, shuffle=True, num_replicas=world_size, rank=rank)
        if self.trainer is not None:
            # Lightning makes the first epoch's iterator (in setup_data) before it calls set_epoch, and the order
            # is fixed when the iterator is made (workers prefetch at once), so a resume from an epoch-end
            # checkpoint would replay epoch 0's order. Lightning restores the finished epochs first: use them.
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=True, **self._loader_kwargs("train"))

    @override
    def val_dataloader(self) -> DataLoader:
        """The held-out windows in a fixed order, sharded across ranks (a rank's last batch may be smaller)."""
        world_size, rank = self._world()
        dataset = self.val_dataset
        sampler = ResumableSampler(len(dataset), seed=self.seed, shuffle=False, num_replicas=world_size, rank=rank)
        return DataLoader(dataset, sampler=sampler, drop_last=False, **self._loader_kwargs("val"))

    @override
    def test_dataloader(self) -> DataLoader:
        """The held-out windows, as :meth:`val_dataloader` (there is no separate test split)."""
        return self.val_dataloader()
