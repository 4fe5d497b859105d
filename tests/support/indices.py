"""A dataset whose sample ``i`` is ``i``: a batch shows exactly which indices a sampler produced."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Indices(Dataset):
    """Sample ``i`` is ``i``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)
