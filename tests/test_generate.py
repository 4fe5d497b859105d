"""`generate`: the sampling function's numbers, determinism for a seed, every encoding, one-line errors."""

from __future__ import annotations

import pytest
import torch

from lightning_app.commands.generate import main
from lightning_app.model.sampling import sample_next
from lightning_app.module import LanguageModel
from tests.cli_helpers import cli_env, fit_args, run

PE_TYPES = ["sinusoidal", "learned", "rope", "alibi", "none"]


def _draws(logits: torch.Tensor, temperature: float, top_k: int | None, n: int = 20000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = sample_next(logits.expand(n, -1), temperature, top_k, generator)
    return torch.bincount(ids, minlength=logits.size(-1)).float() / n


def test_top_k_one_and_temperature_zero_are_the_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    generator = torch.Generator().manual_seed(0)
    assert sample_next(logits, 1.0, 1, generator).item() == 1
    assert sample_next(logits, 0.0, None, generator).item() == 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_the_tempered_softmax(temperature):
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    expected = torch.softmax(logits[0] / temperature, dim=-1)
    assert torch.allclose(_draws(logits, temperature, None), expected, atol=0.015)


def test_top_k_keeps_only_the_k_largest_renormalised():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    freq = _draws(logits, 1.0, 2)
    assert freq[1] == 0 and freq[2] == 0
    expected = torch.softmax(torch.tensor([1.0, 0.5]), dim=-1)
    assert torch.allclose(freq[[0, 3]], expected, atol=0.015)


def _checkpoint(tmp_path, pe_type: str) -> str:
    torch.manual_seed(0)
    model = LanguageModel(pe_type=pe_type, model_size="tiny", vocab_size=32, max_seq_len=16)
    path = tmp_path / f"{pe_type}.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_every_encoding_samples_past_the_training_length_and_a_seed_repeats(tmp_path, capsys, pe_type):
    ckpt = _checkpoint(tmp_path, pe_type)
    outputs = []
    for seed in (1, 1, 2):
        assert main([ckpt, "--max_new_tokens", "24", "--seed", str(seed), "--top_k", "5"]) == 0
        captured = capsys.readouterr()
        outputs.append(captured.out.split())
        assert ("represents at most 16 positions" in captured.err) == (pe_type == "learned")
    assert len(outputs[0]) == 25 and all(0 <= int(t) < 32 for t in outputs[0])
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--prompt", "3 x"], "error: --prompt: got '3 x'; expected token ids between 0 and 31, space-separated"),
        (["--prompt", "40"], "error: --prompt: got '40'; expected token ids between 0 and 31, space-separated"),
        (["--temperature", "-1"], "error: --temperature: got -1.0; expected a number >= 0"),
        (["--top_k", "0"], "error: --top_k: got 0; expected an integer >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, expected):
    assert main([_checkpoint(tmp_path, "rope"), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]


@pytest.mark.slow
def test_generate_from_a_trained_run_through_the_cli(tmp_path):
    env = cli_env(tmp_path / "home")
    trained = run(fit_args("--trainer.max_steps", "2"), tmp_path, env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    args = [*fit_args()[:3], "generate", str(tmp_path / "checkpoints"), "--prompt", "1 2 3", "--max_new_tokens", "5"]
    sampled = run(args, tmp_path, env)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    tokens = sampled.stdout.split()
    assert tokens[:3] == ["1", "2", "3"] and len(tokens) == 8
