"""``python -m lightning_app COMMAND``: every command, one module each, and the one way a user's mistake ends.

``fit``, ``validate`` and ``test`` are LightningCLI subcommands (``fit.py``); the others are plain argparse
commands, each a module with ``main(argv) -> int``. A command reports a mistake in its input by raising
`ConfigError`: `one_line_errors` (around each command's ``main``) and `main` print it as one line, ``error: ...``,
and the status is 2, whatever the command.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable
from typing import NoReturn

from lightning_app.errors import ConfigError

#: The Trainer's commands (``fit.py``), then the plain ones: name -> (module, one line of help).
TRAINER_COMMANDS = {
    "fit": "train; with --resume, continue the newest run from its newest good checkpoint",
    "validate": "validation loss and perplexity of a checkpoint (--ckpt_path)",
    "test": "test loss and perplexity of a checkpoint (--ckpt_path)",
}
COMMANDS = {
    "checkpoints": ("lightning_app.commands.checkpoints", "list what `fit --resume` would see, and the one it takes"),
    "plot": ("lightning_app.commands.plot", "draw the logged curves of runs, their sessions stitched"),
    "lengths": ("lightning_app.commands.lengths", "perplexity at several sequence lengths: train short, test long"),
    "generate": ("lightning_app.commands.generate", "sample text from a checkpoint"),
    "sweep": ("lightning_app.commands.sweep", "train every setting of a grid to its end across sessions, then compare"),
    "launch": ("lightning_app.commands.launch", "train on Kaggle, each session starting the next until done"),
}


def one_line_errors(command: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main(argv) -> int``: a `ConfigError` becomes ``error: <message>`` on stderr and status 2."""

    @functools.wraps(command)
    def main(argv: list[str] | None = None) -> int:
        try:
            return command(argv)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return main


class CommandParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (a `ConfigError`), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def usage() -> str:
    lines = ["usage: python -m lightning_app COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    helps = {**TRAINER_COMMANDS, **{name: text for name, (_module, text) in COMMANDS.items()}}
    lines += [f"  {name:<12} {text}" for name, text in helps.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run one command and exit with its status (2, after one line on stderr, for a mistake in its input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    try:
        if argv[0] in COMMANDS:
            status = importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
        elif argv[0] in TRAINER_COMMANDS or argv[0].startswith("-"):
            from lightning_app.commands.fit import run_trainer_command

            run_trainer_command(argv)  # returns when it is done (a notebook cell keeps its kernel)
            return
        else:
            expected = ", ".join([*TRAINER_COMMANDS, *COMMANDS])
            raise ConfigError(f"got command {argv[0]!r}; expected one of: {expected}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status)
