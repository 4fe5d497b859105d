"""`TokenWindows`: fixed-stride ``(x, y)`` windows over a 1-D token array, shared by the synthetic and text data."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class TokenWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens at a fixed stride over a 1-D token array, as ``(x, y)`` int64 tensors.

    Window ``i`` starts at token ``(first + i) * stride``; ``x`` is its first ``seq_len`` tokens and ``y`` the
    same shifted by one. The array is either held in memory or memory-mapped from a file of uint8 tokens; a
    mapped dataset pickles as its path (workers map the file themselves; pickling an ``np.memmap`` would copy
    the whole file).

    Args:
        tokens: a 1-D integer array, or the path of a file of uint8 tokens to memory-map.
        seq_len: tokens per input; windows hold one more.
        stride: tokens between the starts of consecutive windows.
        first: index of the first window (in units of ``stride``) that belongs to this dataset.
        count: number of windows.
    """

    def __init__(self, tokens: np.ndarray | str | os.PathLike, *, seq_len: int, stride: int, first: int, count: int):
        self._path = None if isinstance(tokens, np.ndarray) else os.fspath(tokens)
        self._tokens = tokens if isinstance(tokens, np.ndarray) else None
        self.seq_len, self.stride, self.first, self.count = seq_len, stride, first, count
        end = (first + count - 1) * stride + seq_len + 1 if count else 0
        if len(self.tokens) < end:
            have = len(self.tokens)
            raise ValueError(f"TokenWindows: windows {first}..{first + count - 1} need {end} tokens; have {have}")

    @property
    def tokens(self) -> np.ndarray:
        """The token array (an ``np.memmap`` when built from a path)."""
        if self._tokens is None:
            self._tokens = np.memmap(self._path, dtype=np.uint8, mode="r")
        return self._tokens

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(f"window {index} out of range [0, {self.count})")
        start = (self.first + index) * self.stride
        window = torch.from_numpy(np.array(self.tokens[start : start + self.seq_len + 1], dtype=np.int64))  # (T+1,)
        return window[:-1], window[1:]  # (T,), (T,)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:
            state["_tokens"] = None
        return state
