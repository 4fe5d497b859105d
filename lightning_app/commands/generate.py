"""``python -m lightning_app generate CKPT [--prompt TEXT] --max_new_tokens N --temperature T --top_k K --seed S``.

Samples from a checkpoint and prints the text: bytes decoded as UTF-8 for a model trained on text
(``TextDataModule``), token ids for the synthetic data (``--prompt`` is then ids too: ``"3 17 5"``). Without a
prompt, sampling starts from a token drawn with the seed; the same seed gives the same output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from lightning_app.commands import CommandParser, one_line_errors
from lightning_app.commands.trained_run import find_checkpoint, training_data
from lightning_app.errors import bad_value
from lightning_app.model.sampling import generate
from lightning_app.module import LanguageModel


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m lightning_app generate", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", metavar="CKPT", help="a .ckpt file, or a run folder (its newest checkpoint)")
    parser.add_argument("--prompt", help="text to continue (token ids for synthetic data); default: one seeded token")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to sample (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default 1.0)")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the K likeliest tokens (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same text (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    return parser


def _prompt_ids(prompt: str | None, is_text: bool, vocab_size: int, generator: torch.Generator) -> list[int]:
    if prompt is None:
        return [int(torch.randint(vocab_size, (1,), generator=generator))]
    if is_text:
        return list(prompt.encode("utf-8")) or [0]
    try:
        ids = [int(token) for token in prompt.split()]
    except ValueError:
        ids = []
    if not ids or not all(0 <= i < vocab_size for i in ids):
        raise bad_value("--prompt", prompt, f"token ids between 0 and {vocab_size - 1}, space-separated")
    return ids


def run(args: argparse.Namespace) -> str:
    if args.max_new_tokens < 0:
        raise bad_value("--max_new_tokens", args.max_new_tokens, "an integer >= 0")
    if not args.temperature >= 0:
        raise bad_value("--temperature", args.temperature, "a number >= 0")
    if args.top_k is not None and args.top_k < 1:
        raise bad_value("--top_k", args.top_k, "an integer >= 1")
    checkpoint = find_checkpoint(args.checkpoint)
    module, hparams = LanguageModel.from_checkpoint(checkpoint, torch.device(args.device))
    is_text = training_data(checkpoint, hparams)["class_path"].endswith("TextDataModule")
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    ids = _prompt_ids(args.prompt, is_text, int(hparams["vocab_size"]), generator)
    limit = module.model.pe.max_length
    if limit is not None and len(ids) + args.max_new_tokens > limit:
        print(
            f"note: pe_type {hparams['pe_type']!r} represents at most {limit} positions: "
            f"past them the model sees only the last {limit} tokens",
            file=sys.stderr,
        )
    prompt = torch.tensor([ids], device=args.device)
    out = generate(module.model, prompt, args.max_new_tokens, args.temperature, args.top_k, generator, limit)[0]
    tokens = out.tolist()
    return bytes(tokens).decode("utf-8", errors="replace") if is_text else " ".join(map(str, tokens))


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    print(run(_parser().parse_args(list(sys.argv[1:] if argv is None else argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
