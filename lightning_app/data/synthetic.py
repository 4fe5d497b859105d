"""The default data: sequences from a random sparse Markov chain, with a known best achievable loss.

Nothing is downloaded or read. From ``seed`` we draw, once, a chain over ``vocab_size`` tokens in which every
token has ``branching`` distinct successors; a sequence starts at a uniform token and each next token is
uniform among the successors of the current one. The next token depends on the current one only, so no model
can beat a cross-entropy of exactly ``log(branching)`` nats on the targets (``loss_floor``): a test can check
that training gets close to it, and a user can read how far a run is from perfect.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lightning_app.data.checks import check_int
from lightning_app.data.datamodule import TokenWindowDataModule
from lightning_app.data.sampler import derive_seed
from lightning_app.data.windows import TokenWindows
from lightning_app.errors import bad_value


def markov_successors(vocab_size: int, branching: int, generator: torch.Generator) -> torch.Tensor:
    """``(vocab_size, branching)`` table: row ``t`` holds the distinct tokens that may follow ``t``."""
    scores = torch.rand(vocab_size, vocab_size, generator=generator)  # (V, V)
    return scores.argsort(dim=1)[:, :branching]  # (V, branching): a random subset of each row


def sample_markov_sequences(
    successors: torch.Tensor, num_sequences: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """``(num_sequences, length)`` int64 tokens: a uniform first token, then uniform successors."""
    vocab_size, branching = successors.shape
    tokens = torch.empty(num_sequences, length, dtype=torch.int64)  # (N, L)
    tokens[:, 0] = torch.randint(vocab_size, (num_sequences,), generator=generator)
    choices = torch.randint(branching, (num_sequences, length - 1), generator=generator)  # (N, L-1)
    for t in range(length - 1):
        tokens[:, t + 1] = successors[tokens[:, t], choices[:, t]]
    return tokens


class SyntheticDataModule(TokenWindowDataModule):
    """Deterministic synthetic sequences with learnable structure and a known loss floor.

    A sample is ``(x, y) = (seq[:-1], seq[1:])`` for a sequence of ``seq_len + 1`` tokens, both int64 of length
    ``seq_len``. All sequences are generated once, at construction, with a local generator: every process
    builds the same data and the global RNG is untouched.

    Example::

        dm = SyntheticDataModule(vocab_size=16, seq_len=32, branching=2)
        x, y = dm.train_dataset[0]
        dm.loss_floor  # log(2) nats: the best any model can reach on y

    Args:
        vocab_size: number of distinct tokens.
        seq_len: tokens per input sequence.
        batch_size: sequences per canonical micro-batch (per device when the devices are as many as the canonical
            ranks); the global batch is ``canonical_ranks x batch_size x accumulate_grad_batches``.
        num_train_sequences: training sequences (an epoch is one pass over them).
        num_val_sequences: held-out sequences from the same chain.
        branching: successors of each token; the best achievable loss is log(branching) nats.
        seed: seeds both the generated data (chain and sequences) and the training order.
        num_workers: data-loading worker processes (0 loads in the main process).
        canonical_ranks: the run's canonical data-parallel width, fixed at its start so that a resume on another
            number of devices takes the same samples per step (see `lightning_app.data.canonical`).
    """

    def __init__(
        self,
        vocab_size: int = 64,
        seq_len: int = 64,
        batch_size: int = 32,
        num_train_sequences: int = 4096,
        num_val_sequences: int = 256,
        branching: int = 4,
        seed: int = 1234,
        num_workers: int = 0,
        canonical_ranks: int = 2,
    ) -> None:
        super().__init__(
            seq_len=seq_len, batch_size=batch_size, seed=seed, num_workers=num_workers, canonical_ranks=canonical_ranks
        )
        self.vocab_size = check_int("--data.vocab_size", vocab_size, 2)
        check_int("--data.branching", branching, 1)
        if branching > vocab_size:
            raise bad_value("--data.branching", branching, f"an integer in [1, --data.vocab_size] = [1, {vocab_size}]")
        check_int("--data.num_train_sequences", num_train_sequences, 1)
        if num_train_sequences < batch_size:
            raise bad_value(
                "--data.num_train_sequences", num_train_sequences, f"an integer >= --data.batch_size ({batch_size})"
            )
        self.num_val_sequences = check_int("--data.num_val_sequences", num_val_sequences, 1)
        self.branching = branching
        self.num_train_windows = num_train_sequences

        generator = torch.Generator().manual_seed(derive_seed(seed, "synthetic-data"))
        self.successors = markov_successors(vocab_size, branching, generator)  # (V, branching)
        total = num_train_sequences + num_val_sequences
        tokens = sample_markov_sequences(self.successors, total, seq_len + 1, generator)  # (N, T+1)
        dtype = np.uint8 if vocab_size <= 256 else np.int32  # stored small; samples are int64
        self._tokens = tokens.flatten().numpy().astype(dtype)  # one sequence after another: stride seq_len + 1

    @property
    def loss_floor(self) -> float:
        """The best achievable mean next-token cross-entropy, in nats: ``log(branching)``."""
        return math.log(self.branching)

    def identity(self) -> dict[str, Any]:
        """Class name and every parameter that generates the data."""
        return {
            "class": type(self).__name__,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "num_train_sequences": self.num_train_windows,
            "num_val_sequences": self.num_val_sequences,
            "branching": self.branching,
            "seed": self.seed,
        }

    def _build_datasets(self) -> tuple[TokenWindows, TokenWindows]:
        windows = {"seq_len": self.seq_len, "stride": self.seq_len + 1}
        train = TokenWindows(self._tokens, first=0, count=self.num_train_windows, **windows)
        val = TokenWindows(self._tokens, first=self.num_train_windows, count=self.num_val_sequences, **windows)
        return train, val
