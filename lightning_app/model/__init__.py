"""The pure PyTorch model: no Lightning here, so it can be built, tested and exported on its own."""

from lightning_app.model.positional import (
    PE_TYPES,
    POSITIONAL_ENCODINGS,
    ALiBiPositionalEncoding,
    LearnedPositionalEncoding,
    NoPositionalEncoding,
    PeType,
    PositionalEncoding,
    RotaryPositionalEncoding,
    SinusoidalPositionalEncoding,
    alibi_slopes,
    build_positional,
    check_positional,
)
from lightning_app.model.transformer import (
    MLP,
    MODEL_SIZES,
    Block,
    CausalSelfAttention,
    TransformerConfig,
    TransformerLM,
)

__all__ = [
    "ALiBiPositionalEncoding",
    "Block",
    "CausalSelfAttention",
    "LearnedPositionalEncoding",
    "MLP",
    "MODEL_SIZES",
    "NoPositionalEncoding",
    "PE_TYPES",
    "POSITIONAL_ENCODINGS",
    "PeType",
    "PositionalEncoding",
    "RotaryPositionalEncoding",
    "SinusoidalPositionalEncoding",
    "TransformerConfig",
    "TransformerLM",
    "alibi_slopes",
    "build_positional",
    "check_positional",
]
