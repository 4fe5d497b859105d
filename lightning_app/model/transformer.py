"""A GPT-style decoder-only Transformer LM, readable top to bottom (after nanoGPT's ``model.py``).

``CausalSelfAttention -> MLP -> Block -> TransformerConfig -> TransformerLM``. The positional encoding is one
object (``positional.py``) owned by the model and handed to every block at call time, so its tables and
parameters exist once, not once per layer.

Shapes: B batch, T sequence length, C ``d_model``, nh ``n_heads``, hs ``head_dim``, V ``vocab_size``.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_app.errors import bad_value
from lightning_app.experiment import ARCHITECTURE_KEYS
from lightning_app.model.positional import (
    PeType,
    PositionalEncoding,
    build_positional,
    check_positional,
)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over PyTorch's fused ``scaled_dot_product_attention``."""

    def __init__(self, config: "TransformerConfig") -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # one matmul for q, k and v
        self.proj = nn.Linear(config.d_model, config.d_model)  # residual projection: GPT-2 scales its init
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, pe: PositionalEncoding, attn_bias: Tensor | None) -> Tensor:
        """Attend causally; ``attn_bias`` is ``pe.attention_bias(...)``, computed once per forward by the model."""
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        q, k = pe.rotate(q, k)  # (B, nh, T, hs) each; identity unless rope
        # No bias: is_causal=True lets SDPA pick the flash kernel. A bias (alibi) already holds the causal -inf,
        # so it goes in as a float attn_mask, which flash cannot take (memory-efficient kernel instead).
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_bias,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_bias is None,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.proj(y))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> d_ff -> C with GELU."""

    def __init__(self, config: "TransformerConfig") -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(config.d_ff, config.d_model)  # residual projection: GPT-2 scales its init
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gelu(self.fc(x))  # (B, T, d_ff)
        return self.dropout(self.proj(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``, a clean residual stream."""

    def __init__(self, config: "TransformerConfig") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, pe: PositionalEncoding, attn_bias: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), pe, attn_bias)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


#: Size presets for ``--model.model_size``; any field can still be overridden one by one.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 256, "max_seq_len": 256},  # CPU, seconds
    "small": {"n_layers": 6, "d_model": 512, "n_heads": 8, "d_ff": 2048, "max_seq_len": 1024},
    "base": {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072, "max_seq_len": 1024},
    "large": {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096, "max_seq_len": 1024},
}

_POSITIVE_INTS = tuple(key for key in ARCHITECTURE_KEYS if key not in ("pe_type", "model_size"))


@dataclass(kw_only=True)
class TransformerConfig:
    """Shape of a ``TransformerLM``; plain values only, so it serialises into a checkpoint.

    Example::

        config = TransformerConfig.from_preset("tiny", pe_type="rope", vocab_size=256)
    """

    vocab_size: int
    """Number of token ids (the tokenizer's vocabulary size)."""
    d_model: int
    """Width of the residual stream (C)."""
    n_layers: int
    """Number of Transformer blocks."""
    n_heads: int
    """Attention heads per block; must divide d_model."""
    d_ff: int
    """Hidden width of each MLP (usually 4 * d_model)."""
    max_seq_len: int
    """Longest sequence for 'learned' positions; the other encodings precompute caches up to it and can go beyond."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches, in [0, 1)."""
    pe_type: PeType
    """Positional encoding: sinusoidal, learned, rope, alibi or none."""

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_value(f"--model.{name}", value, "an integer >= 1")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise bad_value("--model.dropout", self.dropout, "a number in [0, 1)")
        if self.d_model % self.n_heads:
            raise bad_value("--model.n_heads", self.n_heads, f"a divisor of --model.d_model={self.d_model}")
        check_positional(self.pe_type, self.d_model, self.n_heads)  # last: it divides d_model by n_heads

    @property
    def head_dim(self) -> int:
        """Width of one attention head (hs)."""
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(
        cls, model_size: str, *, pe_type: str, vocab_size: int, dropout: float = 0.0, **overrides: Any
    ) -> "TransformerConfig":
        """A config from ``MODEL_SIZES[model_size]``, with any field overridden; ``None`` overrides are ignored.

        Raises:
            ConfigError: unknown ``model_size``, or the resulting config is invalid.
        """
        if model_size not in MODEL_SIZES:
            raise bad_value("--model.model_size", model_size, MODEL_SIZES)
        fields = {**MODEL_SIZES[model_size], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(pe_type=pe_type, vocab_size=vocab_size, dropout=dropout, **fields)


class TransformerLM(nn.Module):
    """Decoder-only language model: ``idx (B, T) -> logits (B, T, V)``.

    Token embedding, positional encoding, pre-norm blocks, final LayerNorm, and an LM head tied to the token
    embedding. GPT-2 initialisation.

    Example::

        model = TransformerLM(TransformerConfig.from_preset("tiny", pe_type="alibi", vocab_size=256))
        logits = model(idx)  # (B, T, 256)
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.pe = build_positional(config)  # one instance, handed to every block
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the same Parameter reads tokens in and writes logits out.
        self.lm_head.weight = self.tok_emb.weight

        self.apply(self._init_weights)
        # GPT-2: each residual branch adds to the stream, so scale its output projection by 1/sqrt(2 * n_layers)
        # to keep the residual stream's variance from growing with depth (two branches per block).
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def check_sequence_length(self, length: int) -> None:
        """Refuse a sequence longer than the positional encoding can represent (``learned`` only).

        Raises:
            ConfigError: naming ``--data.seq_len``, the limit and ``--model.max_seq_len``.
        """
        limit = self.pe.max_length
        if limit is not None and length > limit:
            raise bad_value(
                "--data.seq_len",
                length,
                f"an integer <= {limit} for pe_type {self.config.pe_type!r} (raise --model.max_seq_len to allow more)",
            )

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits for every position.

        Args:
            idx: token ids, LongTensor (B, T).

        Returns:
            logits (B, T, V).

        Raises:
            ConfigError: T is longer than the positional encoding can represent (``learned`` only).
        """
        B, T = idx.size()
        self.check_sequence_length(T)
        x = self.tok_emb(idx)  # (B, T, C)
        x = self.drop(self.pe.embed(x))  # (B, T, C)
        # Once per forward, not per layer: every block sees the same positions.
        attn_bias = self.pe.attention_bias(T, x.device, x.dtype)  # (1, nh, T, T) or None
        for block in self.blocks:
            x = block(x, self.pe, attn_bias)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, V)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, each tied Parameter counted once.

        Args:
            exclude_embeddings: leave out the token embedding (= LM head) and any learned position table, the
                usual "non-embedding" count that scaling laws use.
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() already de-duplicates tied weights
        if exclude_embeddings:
            total -= self.tok_emb.weight.numel() + sum(p.numel() for p in self.pe.parameters())
        return total
