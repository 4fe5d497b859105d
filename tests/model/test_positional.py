"""Numeric tests of the positional encodings against their published formulas."""

import math
from types import SimpleNamespace
from typing import get_args

import pytest
import torch

from lightning_app.errors import ConfigError
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
)


def _config(pe_type: str, d_model: int = 32, n_heads: int = 4, max_seq_len: int = 16) -> SimpleNamespace:
    return SimpleNamespace(pe_type=pe_type, d_model=d_model, n_heads=n_heads, max_seq_len=max_seq_len)


def test_registry_matches_the_literal_and_builds_each_type():
    assert set(PE_TYPES) == set(get_args(PeType)) == {"sinusoidal", "learned", "rope", "alibi", "none"}
    for name in PE_TYPES:
        pe = build_positional(_config(name))
        assert type(pe) is POSITIONAL_ENCODINGS[name]
        assert isinstance(pe, PositionalEncoding)


def test_unknown_pe_type_names_the_flag():
    with pytest.raises(ConfigError, match=r"--model.pe_type: got 'xpos'.*sinusoidal, learned, rope, alibi, none"):
        build_positional(_config("xpos"))


def test_only_learned_is_bounded():
    for name in PE_TYPES:
        expected = 16 if name == "learned" else None
        assert build_positional(_config(name, max_seq_len=16)).max_length == expected


def test_caches_stay_out_of_the_state_dict():
    for name in ("sinusoidal", "rope", "alibi", "none"):
        pe = build_positional(_config(name))
        assert pe.state_dict() == {}, name
    assert list(build_positional(_config("learned")).state_dict()) == ["wpe.weight"]


def test_none_is_a_null_object():
    pe = NoPositionalEncoding(d_model=8, n_heads=2, max_seq_len=4)
    x, q, k = torch.randn(2, 5, 8), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    assert pe.embed(x) is x
    assert pe.rotate(q, k) == (q, k)
    assert pe.attention_bias(5, x.device, x.dtype) is None


def test_sinusoidal_matches_vaswani_formula_and_grows():
    d = 16
    pe = SinusoidalPositionalEncoding(d_model=d, n_heads=2, max_seq_len=8)
    x = torch.randn(1, 40, d)  # longer than max_seq_len: the table must grow
    added = (pe.embed(x) - x) / pe.scale  # (1, 40, d): the table, added at the embeddings' scale
    for pos, i in [(0, 0), (1, 0), (3, 2), (7, 7), (20, 1), (39, 5)]:
        angle = pos / 10000 ** (2 * i / d)
        assert added[0, pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert added[0, pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert pe.attention_bias(4, x.device, x.dtype) is None
    assert pe.rotate(x, x) == (x, x)


def test_sinusoidal_is_added_at_the_token_embeddings_scale():
    # Unit-amplitude sinusoids added to std-0.02 embeddings drown token identity: the model barely learns.
    pe = SinusoidalPositionalEncoding(d_model=64, n_heads=4, max_seq_len=128)
    added = pe.embed(torch.zeros(1, 128, 64))
    assert added.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=0.05)


def test_sinusoidal_odd_width():
    pe = SinusoidalPositionalEncoding(d_model=5, n_heads=1, max_seq_len=4)
    added = pe.embed(torch.zeros(1, 4, 5))[0] / pe.scale  # (4, 5)
    assert added[3, 4].item() == pytest.approx(math.sin(3 / 10000 ** (4 / 5)), abs=1e-6)
    assert added[3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 5)), abs=1e-6)


def test_learned_adds_its_table_and_is_initialised_at_std_002():
    torch.manual_seed(0)
    pe = LearnedPositionalEncoding(d_model=64, n_heads=4, max_seq_len=256)
    assert 0.018 < pe.wpe.weight.std().item() < 0.022
    assert abs(pe.wpe.weight.mean().item()) < 0.002
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(pe.embed(x), x + pe.wpe.weight[:10])


def _rope_reference(x: torch.Tensor, pos: int) -> torch.Tensor:
    """Rotate a single (hs,) vector by hand: pair (i, i + hs/2) turns by pos * 10000^(-2i/hs)."""
    hs = x.numel()
    out = x.clone()
    for i in range(hs // 2):
        theta = pos * 10000 ** (-2 * i / hs)
        a, b = x[i].item(), x[i + hs // 2].item()
        out[i] = a * math.cos(theta) - b * math.sin(theta)
        out[i + hs // 2] = a * math.sin(theta) + b * math.cos(theta)
    return out


def test_rope_matches_rotate_half_by_hand():
    torch.manual_seed(0)
    pe = RotaryPositionalEncoding(d_model=16, n_heads=2, max_seq_len=8)
    q = torch.randn(1, 2, 12, 8, dtype=torch.float64)  # T=12 > max_seq_len: cache grows
    pe = pe.double()
    q_rot, k_rot = pe.rotate(q, q.clone())
    for pos in (0, 1, 5, 11):
        torch.testing.assert_close(q_rot[0, 1, pos], _rope_reference(q[0, 1, pos], pos), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_rot, q_rot)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps lengths


def test_rope_dot_product_depends_only_on_relative_offset():
    torch.manual_seed(0)
    hs, T = 16, 64
    pe = RotaryPositionalEncoding(d_model=2 * hs, n_heads=2, max_seq_len=T).double()
    q_vec, k_vec = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    q = q_vec.expand(1, 2, T, hs)  # the same query vector at every position
    k = k_vec.expand(1, 2, T, hs)
    q_rot, k_rot = pe.rotate(q, k)
    scores = q_rot[0, 0] @ k_rot[0, 0].T  # (T, T): scores[m, n] = q at m . k at n
    for m, n, s in [(5, 2, 10), (3, 3, 40), (0, 7, 31), (20, 1, 43)]:
        # The cos/sin tables are built in float32 (as in training), hence 1e-6 rather than float64 precision.
        assert scores[m, n].item() == pytest.approx(scores[m + s, n + s].item(), rel=1e-6)
    # ...and it does depend on the offset (a no-op rotate would make every score equal).
    assert not math.isclose(scores[5, 2].item(), scores[9, 2].item(), abs_tol=1e-6)


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ConfigError, match=r"--model.n_heads: got 4.*even head_dim"):
        build_positional(_config("rope", d_model=20, n_heads=4))


def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8) == [0.5, 0.25, 0.125, 0.0625, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(16)[:3] == pytest.approx([2**-0.5, 2**-1.0, 2**-1.5])
    assert alibi_slopes(1) == [2**-8]


def test_alibi_slopes_non_power_of_two_follow_the_reference_rule():
    # 12 heads: the 8-head slopes, then every other one of the 16-head sequence 2^-0.5, 2^-1, 2^-1.5, ...
    expected = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-12)
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3 from the 8-head sequence.
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rel=1e-12)


def test_alibi_bias_values_and_causal_mask():
    pe = ALiBiPositionalEncoding(d_model=64, n_heads=8, max_seq_len=4)
    bias = pe.attention_bias(10, torch.device("cpu"), torch.float32)  # T=10 > max_seq_len: cache grows
    assert bias.shape == (1, 8, 10, 10)
    slopes = [2.0 ** -(h + 1) for h in range(8)]
    for h, i, j in [(0, 0, 0), (0, 5, 2), (3, 9, 0), (7, 4, 3), (2, 9, 9)]:
        assert bias[0, h, i, j].item() == pytest.approx(-slopes[h] * (i - j))
    above = torch.ones(10, 10, dtype=torch.bool).triu(1)
    assert torch.isneginf(bias[0][:, above]).all()
    assert torch.isfinite(bias[0][:, ~above]).all()
    assert pe.attention_bias(3, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_alibi_bias_for_twelve_heads_uses_non_power_of_two_slopes():
    pe = ALiBiPositionalEncoding(d_model=96, n_heads=12, max_seq_len=8)
    bias = pe.attention_bias(8, torch.device("cpu"), torch.float32)  # (1, 12, 8, 8)
    assert bias[0, 9, 7, 6].item() == pytest.approx(-(2**-1.5), rel=1e-6)
    assert bias[0, 11, 5, 1].item() == pytest.approx(-4 * 2**-3.5, rel=1e-6)


def test_buffers_follow_dtype_conversion():
    pe = RotaryPositionalEncoding(d_model=16, n_heads=2, max_seq_len=4).double()
    q = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    q_rot, _ = pe.rotate(q, q)  # grows the cache after .double(): must keep float64
    assert pe.cos.dtype == torch.float64 and pe.cos.shape[0] >= 9
    assert q_rot.dtype == torch.float64
