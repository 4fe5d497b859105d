"""Tests of the Transformer LM: shapes, causality, config validation, init, and the SDPA path each encoding takes."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lightning_app.errors import ConfigError
from lightning_app.model import MODEL_SIZES, PE_TYPES, PositionalEncoding, TransformerConfig, TransformerLM
from tests.cli_helpers import REPO

VOCAB = 97


def _tiny(pe_type: str, **overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig.from_preset("tiny", pe_type=pe_type, vocab_size=VOCAB, **overrides))


def _expected_parameters(size: dict[str, int], vocab: int, pe_type: str) -> tuple[int, int]:
    """(total, non-embedding) counted by hand: Linear weights + biases, LayerNorm weight + bias, tied head."""
    C, F_, L = size["d_model"], size["d_ff"], size["n_layers"]
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * F_ + F_) + (F_ * C + C) + 2 * (2 * C)
    non_embedding = L * per_block + 2 * C  # + final LayerNorm
    embedding = vocab * C + (size["max_seq_len"] * C if pe_type == "learned" else 0)
    return non_embedding + embedding, non_embedding


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_tiny_forward_shape_and_parameter_count(pe_type):
    model = _tiny(pe_type)
    logits = model(torch.randint(0, VOCAB, (3, 20)))
    assert logits.shape == (3, 20, VOCAB)
    assert torch.isfinite(logits).all()
    total, non_embedding = _expected_parameters(MODEL_SIZES["tiny"], VOCAB, pe_type)
    assert model.num_parameters() == total
    assert model.num_parameters(exclude_embeddings=True) == non_embedding


@pytest.mark.parametrize("size", ["small", "base", "large"])
@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_big_sizes_on_meta_device(size, pe_type):
    vocab = 50257
    with torch.device("meta"):  # no memory, no time: shapes and counts only
        model = TransformerLM(TransformerConfig.from_preset(size, pe_type=pe_type, vocab_size=vocab))
        logits = model(torch.zeros(2, 32, dtype=torch.long))
    assert logits.shape == (2, 32, vocab)
    total, non_embedding = _expected_parameters(MODEL_SIZES[size], vocab, pe_type)
    assert model.num_parameters() == total
    assert model.num_parameters(exclude_embeddings=True) == non_embedding
    # Roughly 12 * L * C^2 outside the embeddings (GPT-2 small ~85M, medium ~302M).
    approx = {"small": 19e6, "base": 85e6, "large": 302e6}[size]
    assert 0.97 * approx < non_embedding < 1.03 * approx


def test_presets_are_the_documented_sizes():
    assert MODEL_SIZES["tiny"] == {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 256, "max_seq_len": 256}
    assert MODEL_SIZES["small"] == {"n_layers": 6, "d_model": 512, "n_heads": 8, "d_ff": 2048, "max_seq_len": 1024}
    assert MODEL_SIZES["base"] == {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072, "max_seq_len": 1024}
    assert MODEL_SIZES["large"] == {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096, "max_seq_len": 1024}


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_causality(pe_type):
    model = _tiny(pe_type).double().eval()
    idx = torch.randint(0, VOCAB, (2, 24))
    changed = idx.clone()
    t = 15
    changed[:, t] = (idx[:, t] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(after[:, t:], before[:, t:])  # the change is visible from position t on


def test_learned_rejects_sequences_longer_than_its_table():
    model = _tiny("learned", max_seq_len=32)
    with pytest.raises(ConfigError, match=r"--data.seq_len: got 33.*32.*--model.max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))
    assert model(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, VOCAB)


@pytest.mark.parametrize("pe_type", ["sinusoidal", "rope", "alibi", "none"])
def test_unbounded_encodings_run_past_max_seq_len(pe_type):
    model = _tiny(pe_type, max_seq_len=16)
    assert model(torch.zeros(1, 40, dtype=torch.long)).shape == (1, 40, VOCAB)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"pe_type": "xpos"}, r"--model.pe_type: got 'xpos'; expected one of: sinusoidal, learned, rope, alibi, none"),
        ({"n_layers": 0}, r"--model.n_layers: got 0; expected an integer >= 1"),
        ({"d_model": -8}, r"--model.d_model: got -8; expected an integer >= 1"),
        ({"vocab_size": 0}, r"--model.vocab_size: got 0"),
        ({"d_ff": 2.5}, r"--model.d_ff: got 2.5"),
        ({"max_seq_len": True}, r"--model.max_seq_len: got True"),
        ({"dropout": 1.0}, r"--model.dropout: got 1.0; expected a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"--model.dropout: got -0.1"),
        ({"n_heads": 3}, r"--model.n_heads: got 3; expected a divisor of --model.d_model=64"),
        ({"d_model": 20, "n_heads": 4, "pe_type": "rope"}, r"--model.n_heads: got 4;.*even head_dim"),
    ],
)
def test_bad_config_names_flag_and_value(overrides, pattern):
    fields = {"pe_type": "rope", "vocab_size": VOCAB, **MODEL_SIZES["tiny"], **overrides}
    with pytest.raises(ConfigError, match=pattern):
        TransformerConfig(**fields)


def test_odd_head_dim_is_fine_without_rope():
    config = TransformerConfig(pe_type="alibi", vocab_size=VOCAB, **{**MODEL_SIZES["tiny"], "d_model": 20})
    assert config.head_dim == 5


def test_from_preset_overrides_and_unknown_size():
    config = TransformerConfig.from_preset("tiny", pe_type="alibi", vocab_size=50, n_layers=3, d_ff=None, dropout=0.1)
    assert (config.n_layers, config.d_ff, config.d_model, config.dropout) == (3, 256, 64, 0.1)
    assert config.head_dim == 16
    with pytest.raises(ConfigError, match=r"--model.model_size: got 'huge'; expected one of: tiny, small, base, large"):
        TransformerConfig.from_preset("huge", pe_type="rope", vocab_size=50)
    with pytest.raises(ConfigError, match=r"--model.n_heads"):
        TransformerConfig.from_preset("tiny", pe_type="rope", vocab_size=50, n_heads=5)
    assert dataclasses.asdict(config)["pe_type"] == "alibi"  # plain values: serialisable into a checkpoint


def test_weight_tying_and_one_shared_positional_encoding():
    model = _tiny("learned")
    assert model.lm_head.weight is model.tok_emb.weight
    assert sum(isinstance(m, PositionalEncoding) for m in model.modules()) == 1
    assert sum(1 for k in model.state_dict() if "wpe" in k) == 1  # not one per block


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    n_layers = 8
    model = TransformerLM(TransformerConfig.from_preset("tiny", pe_type="rope", vocab_size=VOCAB, n_layers=n_layers))
    scaled = 0.02 / (2 * n_layers) ** 0.5
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert block.mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert block.mlp.fc.bias.abs().max().item() == 0
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_sdpa_path_and_bias_computed_once(pe_type, monkeypatch):
    model = _tiny(pe_type, dropout=0.1)
    calls, bias_calls = [], []
    real_sdpa, real_bias = F.scaled_dot_product_attention, model.pe.attention_bias

    def spy_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((attn_mask, dropout_p, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    def spy_bias(*args):
        bias_calls.append(args)
        return real_bias(*args)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(model.pe, "attention_bias", spy_bias)
    model.train()(torch.zeros(2, 10, dtype=torch.long))
    model.eval()(torch.zeros(2, 10, dtype=torch.long))
    assert len(calls) == 2 * model.config.n_layers
    assert len(bias_calls) == 2  # once per forward, not once per layer
    assert [c[1] for c in calls] == [0.1, 0.1, 0.0, 0.0]  # dropout only in training
    for attn_mask, _, is_causal in calls:
        if pe_type == "alibi":
            assert attn_mask.shape == (1, 4, 10, 10) and attn_mask.dtype == torch.float32 and not is_causal
        else:
            assert attn_mask is None and is_causal


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_compiles_without_graph_breaks(pe_type):
    torch._dynamo.reset()
    model = _tiny(pe_type).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx))


def test_tiny_learns_on_cpu():
    model = _tiny("rope")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.arange(33).remainder(7).repeat(4, 1)  # (4, 33): a periodic sequence, easy to predict
    x, y = data[:, :-1], data[:, 1:]
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_model_package_does_not_import_lightning():
    code = (
        "import lightning_app.model, sys; "
        "assert not any(m.startswith(('lightning.', 'pytorch_lightning')) or m in ('lightning', 'pytorch_lightning') "
        "for m in sys.modules), sorted(m for m in sys.modules if 'lightning' in m)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
