"""Sampling the next token from a language model: temperature, top-k, a seeded generator (pure torch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> Tensor:
    """One token id per row of ``logits`` (B, V): greedy at temperature 0, else drawn from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits. Returns (B,)."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    max_context: int | None = None,
) -> Tensor:
    """Extend ``ids`` (B, T) by ``max_new_tokens`` sampled tokens; the model sees at most the last ``max_context``
    tokens (a bounded positional encoding's table), all of them when None. Returns (B, T + max_new_tokens)."""
    generator = generator or torch.Generator(device=ids.device)
    for _ in range(max_new_tokens):
        context = ids if max_context is None else ids[:, -max_context:]
        logits = model(context)[:, -1, :]  # (B, V)
        ids = torch.cat([ids, sample_next(logits, temperature, top_k, generator)[:, None]], dim=1)
    return ids
