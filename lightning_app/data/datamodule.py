"""`TokenWindowDataModule`: the base of the data modules, with loaders that resume exactly."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_app.data.canonical import Layout, SavedLayout, fresh_layout, resumed_layout
from lightning_app.data.checks import check_int
from lightning_app.data.loader import ResumableDataLoader
from lightning_app.data.sampler import ResumableSampler, derive_seed
from lightning_app.data.windows import TokenWindows
from lightning_app.errors import ConfigError, bad_value


class TokenWindowDataModule(pl.LightningDataModule):
    """Base of the data modules: loaders that resume exactly, split into the run's canonical micro-batches.

    The Trainer runs with ``use_distributed_sampler=False``: Lightning leaves our loaders alone and the
    :class:`ResumableSampler` shards them. Each training batch of a process holds its share of the round's C
    canonical micro-batches (`lightning_app.data.canonical`): both of them on one device of a run of 2, one on each
    of 2 devices. Subclasses set ``vocab_size``, ``seq_len`` and ``num_train_windows`` in ``__init__`` and implement
    :meth:`_build_datasets` and :meth:`identity`.

    Args:
        seq_len: tokens per training input.
        batch_size: windows per canonical micro-batch (per device when the devices are as many as the canonical
            ranks); the global batch is ``canonical_ranks x batch_size x accumulate_grad_batches``.
        seed: seed of the training order (each epoch's order is a function of it and the epoch).
        num_workers: data-loading worker processes (0 loads in the main process).
        canonical_ranks: the run's canonical data-parallel width, fixed at its start (a resume takes the
            checkpoint's); more devices than this at the start raise it to the number of devices.
    """

    vocab_size: int
    num_train_windows: int

    def __init__(self, *, seq_len: int, batch_size: int, seed: int, num_workers: int, canonical_ranks: int = 2) -> None:
        super().__init__()
        self.seq_len = check_int("--data.seq_len", seq_len, 1)
        self.batch_size = check_int("--data.batch_size", batch_size, 1)
        self.num_workers = check_int("--data.num_workers", num_workers, 0)
        self.canonical_ranks = check_int("--data.canonical_ranks", canonical_ranks, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_value("--data.seed", seed, "an integer")
        self.seed = seed
        self._datasets: tuple[TokenWindows, TokenWindows] | None = None
        self._saved_layout: SavedLayout | None = None  # the checkpoint's, on resume

    def resume_layout(self, saved: SavedLayout) -> str | None:
        """Continue the run that saved ``saved``: its canonical ranks from now on. Returns the line to log, if any.

        Called from ``LanguageModel.on_load_checkpoint``: after ``setup``, before the loaders and the optimizer
        (whose schedule counts the steps) are built.
        """
        self._saved_layout = saved
        world_size, rank = self._world()
        return resumed_layout(saved, self.batch_size, world_size, rank, self._accumulate())[1]

    def layout(self, world_size: int | None = None, rank: int | None = None) -> Layout:
        """The run's layout on this process (or on ``world_size`` devices): the checkpoint's C on resume.

        Raises:
            ConfigError: at a fresh start, ``--data.canonical_ranks`` is above the number of devices and not a
                multiple of it.
        """
        own_world, own_rank = self._world()
        world_size = own_world if world_size is None else world_size
        rank = (own_rank if world_size == own_world else 0) if rank is None else rank
        try:
            if self._saved_layout is not None:
                return resumed_layout(self._saved_layout, self.batch_size, world_size, rank, self._accumulate())[0]
            return fresh_layout(self.canonical_ranks, self.batch_size, world_size, rank, self._accumulate())
        except ConfigError:
            if own_rank != 0:  # every rank stops at the same point; rank 0 says why, in one line
                raise SystemExit(2) from None
            raise

    def global_batch_size(self) -> int:
        """Samples per optimizer step: canonical ranks x ``batch_size`` x ``accumulate_grad_batches``."""
        return self.layout().global_batch_size

    def _accumulate(self) -> int:
        return int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1) if self.trainer is not None else 1

    def _build_datasets(self) -> tuple[TokenWindows, TokenWindows]:
        """Build the (train, val) datasets; called once, lazily."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Plain-typed settings that identify the data: class name and what generates or locates it."""
        raise NotImplementedError

    def num_train_batches(self, world_size: int = 1) -> int:
        """Training batches per epoch on each rank: pure arithmetic, no loader is built.

        Every rank has as many batches as there are rounds of C canonical micro-batches in an epoch, whatever
        the number of devices.

        Args:
            world_size: number of ranks sharing the data.
        """
        return (self.num_train_windows // self.layout(world_size).canonical_ranks) // self.batch_size

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

    def _loader_kwargs(self, purpose: str, batch_size: int) -> dict[str, Any]:
        trainer = self.trainer
        return {
            "batch_size": batch_size,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            # Only for a CUDA trainer; asking torch.cuda would not initialise CUDA but pinning needs a GPU anyway.
            "pin_memory": trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator),
            # Each loader draws its worker seeds from its own generator, never from the global torch RNG.
            "generator": torch.Generator().manual_seed(derive_seed(self.seed, "loader", purpose)),
        }

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        layout = self.layout()
        ranks = layout.canonical_ranks
        if self.num_train_batches(layout.world_size) < 1:
            raise bad_value(
                "--data.batch_size",
                self.batch_size,
                f"at most {self.num_train_windows // ranks}, the training windows per canonical rank "
                f"({self.num_train_windows} windows over {ranks} canonical ranks)",
            )
        dataset = self.train_dataset
        sampler = ResumableSampler(
            len(dataset),
            seed=self.seed,
            shuffle=True,
            num_replicas=layout.world_size,
            rank=layout.rank,
            canonical_ranks=ranks,
            micro_batch_size=self.batch_size,
        )
        if self.trainer is not None:
            # Lightning makes the first epoch's iterator (in setup_data) before it calls set_epoch, and the order
            # is fixed when the iterator is made (workers prefetch at once), so a resume from an epoch-end
            # checkpoint would replay epoch 0's order. Lightning restores the finished epochs first: use them.
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        kwargs = self._loader_kwargs("train", sampler.process_batch_size)
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=True, **kwargs)

    @override
    def val_dataloader(self) -> DataLoader:
        """The held-out windows in a fixed order, sharded across ranks (a rank's last batch may be smaller)."""
        world_size, rank = self._world()
        dataset = self.val_dataset
        sampler = ResumableSampler(len(dataset), seed=self.seed, shuffle=False, num_replicas=world_size, rank=rank)
        return DataLoader(dataset, sampler=sampler, drop_last=False, **self._loader_kwargs("val", self.batch_size))

    @override
    def test_dataloader(self) -> DataLoader:
        """The held-out windows, as :meth:`val_dataloader` (there is no separate test split)."""
        return self.val_dataloader()
