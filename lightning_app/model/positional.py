"""Positional encodings: x-transformers' three families behind one interface.

A position reaches attention in one of three places, and each encoding implements only its own hook:

- ``embed(x)``: added to the token embeddings (``sinusoidal``, ``learned``);
- ``rotate(q, k)``: applied to queries and keys (``rope``);
- ``attention_bias(T, device, dtype)``: added to the attention scores (``alibi``).

``none`` is the null object: every hook is a no-op, so the model never branches on the encoding's type.

Every table an encoding needs is computed in one place, ``_tables(length, device)``, and stored by
``_ensure_length`` as non-persistent buffers: they follow ``.to(device)`` / ``.double()`` but stay out of
checkpoints, and they grow (doubling) when a longer sequence arrives than any seen so far.

Example::

    pe = build_positional(config)  # config.pe_type == "rope"
    q, k = pe.rotate(q, k)  # (B, nh, T, hs) each
"""

import math
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from lightning_app.errors import bad_value

PeType = Literal["sinusoidal", "learned", "rope", "alibi", "none"]


class PositionalConfig(Protocol):
    """The fields of a model config that a positional encoding reads (``TransformerConfig`` has them all)."""

    pe_type: str
    d_model: int
    n_heads: int
    max_seq_len: int


class PositionalEncoding(nn.Module):
    """Base class: three hooks, each a no-op, and the one place where caches are built.

    Args:
        d_model: width of the token embeddings (C).
        n_heads: number of attention heads (nh); head_dim is ``d_model // n_heads``.
        max_seq_len: the caches are precomputed up to this length (and the ``learned`` table has this size).
    """

    #: Longest sequence this encoding can represent; None means any length.
    max_length: int | None = None

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.max_seq_len = max_seq_len
        self._cached_length = 0
        self._ensure_length(max_seq_len)

    def embed(self, x: Tensor) -> Tensor:
        """Add positional information to token embeddings ``x`` (B, T, C); returns (B, T, C)."""
        return x

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Apply positional information to queries and keys, each (B, nh, T, hs)."""
        return q, k

    def attention_bias(self, T: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """A float (1, nh, T, T) bias for the attention scores, causal mask (-inf) included, or None.

        None means "no bias": the attention then takes SDPA's ``is_causal=True`` fused path.
        """
        return None

    def _tables(self, length: int, device: torch.device | None) -> dict[str, Tensor]:
        """Every cached table of this encoding, for positions ``[0, length)``. The default has none."""
        return {}

    def _ensure_length(self, length: int) -> None:
        """Make every cached table cover ``length`` positions, keeping each buffer's device and dtype."""
        if length <= self._cached_length:
            return
        # Double, so that a slowly growing T (e.g. generation) rebuilds the tables O(log T) times.
        length = max(length, 2 * self._cached_length)
        old = dict(self.named_buffers(recurse=False))
        device = next(iter(old.values())).device if old else None  # None: the default (or `with torch.device`)
        for name, table in self._tables(length, device).items():
            if name in old:  # keep what .to() / .double() did to the previous table
                table = table.to(dtype=old[name].dtype)
            self.register_buffer(name, table, persistent=False)
        self._cached_length = length

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, max_seq_len={self.max_seq_len}"


class NoPositionalEncoding(PositionalEncoding):
    """``none``: no positional information at all (a causal decoder can still infer some from the mask)."""


class SinusoidalPositionalEncoding(PositionalEncoding):
    """``sinusoidal`` (Vaswani et al. 2017): ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(...)``.

    Added to the token embeddings; not learned, defined for any length. The table has unit amplitude while the
    token embeddings start at std 0.02 (GPT-2 init, tied to the LM head): added as is, position would drown
    token identity and the model learns next to nothing. So it is added scaled to the embeddings' init scale,
    ``PE * 0.02 * sqrt(2)`` (the table's RMS is ``1/sqrt(2)``); the table itself is the formula.
    """

    scale = 0.02 * math.sqrt(2.0)

    def _tables(self, length: int, device: torch.device | None) -> dict[str, Tensor]:
        d = self.d_model
        pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
        two_i = torch.arange(0, d, 2, device=device, dtype=torch.float32)  # (ceil(d/2),)
        angle = pos / 10000.0 ** (two_i / d)  # (L, ceil(d/2))
        table = torch.zeros(length, d, device=device)  # (L, C)
        table[:, 0::2] = angle.sin()
        table[:, 1::2] = angle[:, : d // 2].cos()  # an odd d has one sine column more than cosine columns
        return {"table": table}

    def embed(self, x: Tensor) -> Tensor:
        T = x.size(1)
        self._ensure_length(T)
        return x + self.scale * self.table[:T].to(x.dtype)  # (B, T, C) + (T, C)


class LearnedPositionalEncoding(PositionalEncoding):
    """``learned`` (GPT-2): a trained ``nn.Embedding(max_seq_len, d_model)``, initialised normal(0, 0.02).

    The only bounded encoding: ``max_length == max_seq_len``.
    """

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.max_length = max_seq_len
        self.wpe = nn.Embedding(max_seq_len, d_model)
        nn.init.normal_(self.wpe.weight, mean=0.0, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        pos = torch.arange(x.size(1), device=x.device)  # (T,)
        return x + self.wpe(pos)  # (B, T, C) + (T, C)


class RotaryPositionalEncoding(PositionalEncoding):
    """``rope`` (Su et al. 2021): rotate q and k so that ``q_m . k_n`` depends only on ``m - n``.

    Convention: "rotate half" (GPT-NeoX / LLaMA), not interleaved: dimension ``i`` pairs with ``i + hs/2``,
    and the pair at position ``m`` turns by the angle ``m * base^(-2i/hs)``. Needs an even head_dim.
    """

    base = 10000.0

    def _tables(self, length: int, device: torch.device | None) -> dict[str, Tensor]:
        hs = self.head_dim
        inv_freq = self.base ** -(torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs)  # (hs/2,)
        pos = torch.arange(length, device=device, dtype=torch.float32)  # (L,)
        angle = torch.outer(pos, inv_freq)  # (L, hs/2)
        angle = torch.cat((angle, angle), dim=-1)  # (L, hs): dims i and i + hs/2 share an angle
        return {"cos": angle.cos(), "sin": angle.sin()}

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        T = q.size(-2)
        self._ensure_length(T)
        cos = self.cos[:T].to(q.dtype)  # (T, hs), broadcast over (B, nh)
        sin = self.sin[:T].to(q.dtype)  # (T, hs)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin  # (B, nh, T, hs) each


def _rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: the 90-degree turn of each (i, i + hs/2) pair."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., hs)


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes by the reference implementation's rule (Press et al. 2022).

    For ``n`` a power of two: the geometric sequence ``2^(-8/n * (i+1))``, i.e. 1/2, 1/4, ..., 1/256 for 8 heads.
    Otherwise: the slopes of the closest lower power of two ``p``, then every other slope of the ``2p`` sequence
    until there are ``n``.
    """
    if math.log2(n_heads).is_integer():
        return [2.0 ** (-8.0 / n_heads * (i + 1)) for i in range(n_heads)]
    p = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: n_heads - p]


class ALiBiPositionalEncoding(PositionalEncoding):
    """``alibi`` (Press et al. 2022): add ``-slope_h * (i - j)`` to the score of query i on key j (j <= i).

    The cached table is the (L, L) matrix ``j - i`` with ``-inf`` above the diagonal (the causal mask); the
    per-head bias is one broadcast multiply by the slopes, done once per forward and shared by every layer.
    """

    def _tables(self, length: int, device: torch.device | None) -> dict[str, Tensor]:
        slopes = torch.tensor(alibi_slopes(self.n_heads), device=device, dtype=torch.float32)  # (nh,)
        pos = torch.arange(length, device=device)  # (L,)
        offset = (pos[None, :] - pos[:, None]).float()  # (L, L): j - i, <= 0 on and below the diagonal
        offset = offset.masked_fill(pos[None, :] > pos[:, None], float("-inf"))  # (L, L): causal mask
        return {"slopes": slopes, "offset": offset}

    def attention_bias(self, T: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        self._ensure_length(T)
        # slope > 0, so slope * -inf stays -inf and the mask survives the multiply.
        bias = self.slopes.view(1, -1, 1, 1) * self.offset[:T, :T]  # (1, nh, T, T)
        return bias.to(device=device, dtype=dtype)


POSITIONAL_ENCODINGS: dict[str, type[PositionalEncoding]] = {
    "sinusoidal": SinusoidalPositionalEncoding,
    "learned": LearnedPositionalEncoding,
    "rope": RotaryPositionalEncoding,
    "alibi": ALiBiPositionalEncoding,
    "none": NoPositionalEncoding,
}
PE_TYPES = tuple(POSITIONAL_ENCODINGS)


def build_positional(config: PositionalConfig) -> PositionalEncoding:
    """The encoding named by ``config.pe_type``, sized from the config.

    Raises:
        ConfigError: ``pe_type`` is not a key of ``POSITIONAL_ENCODINGS``, or ``rope`` gets an odd head_dim.
    """
    check_positional(config.pe_type, config.d_model, config.n_heads)
    return POSITIONAL_ENCODINGS[config.pe_type](config.d_model, config.n_heads, config.max_seq_len)


def check_positional(pe_type: str, d_model: int, n_heads: int) -> None:
    """Refuse a ``pe_type`` outside ``POSITIONAL_ENCODINGS``, and ``rope`` with an odd head_dim.

    Raises:
        ConfigError: naming ``--model.pe_type`` or ``--model.n_heads``.
    """
    if pe_type not in POSITIONAL_ENCODINGS:
        raise bad_value("--model.pe_type", pe_type, PE_TYPES)
    head_dim = d_model // n_heads
    if pe_type == "rope" and head_dim % 2:
        raise bad_value(
            "--model.n_heads",
            n_heads,
            f"a head count giving an even head_dim for pe_type 'rope' (--model.d_model={d_model} / "
            f"--model.n_heads={n_heads} = {head_dim})",
        )
