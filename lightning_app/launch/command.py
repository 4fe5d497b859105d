"""The command a chain runs (``fit`` or ``sweep``), made to mean the same run inside the kernel.

What the command names on this machine goes along in the code dataset, and its argument is rewritten to the file's
name there (``{"code": name}`` in the plan): every ``--config`` file, and a text corpus (``--data.path``, on the
command line or in a config file: a file, or the files a folder or glob names, flattened in their order). A ``fit``
without ``--config`` gets ``configs/default.yaml`` explicitly, as ``fit`` itself would add it (the installed wheel
has no ``configs/``).

A ``fit`` is parsed here as ``fit`` would parse it (without a Trainer, without touching any store), so that a
mistake is one line now rather than a failed session later, and so that its experiment is known: the default
kernel is named after it, and its checkpoints go to ``OWNER/<experiment>-checkpoints`` unless ``--sync.dataset``
says otherwise; that dataset is written into the command (the kernel mounts the corpus elsewhere, which would
name the experiment differently). A ``sweep`` is checked when it runs: its trials have datasets of their own.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_app.errors import ConfigError
from lightning_app.launch.plan import COMMANDS

#: Options whose value is a file on this machine that the kernel needs.
_CONFIG = "--config"
_DATA_PATH = "--data.path"


@dataclass
class PreparedCommand:
    """A command ready to be planned.

    Attributes:
        command: ``fit`` or ``sweep``.
        args: its arguments, files taken along as ``{"code": name}``.
        files: ``{name in the code dataset: local path}``.
        checkpoints: the ``fit``'s dataset; None for a sweep.
        default_slug: the kernel's slug when ``--kernel`` is not given.
    """

    command: str
    args: list[object]
    files: dict[str, Path] = field(default_factory=dict)
    checkpoints: str | None = None
    default_slug: str = ""


def prepare(words: list[str], owner: str) -> PreparedCommand:
    """``fit ARGS`` or ``sweep ARGS`` (what follows ``--``) ready for a plan; `ConfigError` for a bad command."""
    if not words or words[0] not in COMMANDS:
        got = words[0] if words else "nothing"
        raise ConfigError(f"launch: got {got!r} after '--'; expected one of: {', '.join(COMMANDS)} and its options")
    command, args = words[0], _split_equals(words[1:])
    from lightning_app.commands.fit import expand_aliases, with_default_config

    args = with_default_config(["fit", *expand_aliases(args)])[1:]  # fit's own rules, for a sweep too
    args = _without_resume(args)
    prepared = PreparedCommand(command, [])
    if command == "fit":
        _plan_fit(args, owner, prepared)
    else:
        _plan_sweep(args, prepared)
    return prepared


def _split_equals(args: list[str]) -> list[str]:
    """``--config=x`` -> ``--config x`` for the options whose value may be taken along."""
    split: list[str] = []
    for arg in args:
        flag, eq, value = arg.partition("=")
        split += [flag, value] if eq and flag in (_CONFIG, _DATA_PATH) else [arg]
    return split


def _without_resume(args: list[str]) -> list[str]:
    """Each session adds ``--resume`` itself; a checkpoint file of this machine cannot be taken along."""
    kept: list[str] = []
    for index, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag != "--resume":
            kept.append(arg)
            continue
        following = args[index + 1] if index + 1 < len(args) else None
        if eq or (following is not None and not following.startswith("-")):
            given = value if eq else following
            raise ConfigError(
                f"--resume: got {given!r}; a launched chain resumes each session from its newest published "
                "checkpoint (--resume without a value, or leave it out)"
            )
    return kept


def _plan_fit(args: list[str], owner: str, prepared: PreparedCommand) -> None:
    cli = _parse_fit(args)
    from lightning_app.experiment import experiment_name

    identity = cli.datamodule.identity() if hasattr(cli.datamodule, "identity") else {}
    experiment = experiment_name(cli.model.settings(), identity)
    sync = cli.config_init["sync"]
    options = sync.store_options
    if options.directory:
        raise ConfigError(
            f"--sync.directory: got {options.directory!r}; a launched chain publishes to a Kaggle dataset (leave "
            "--sync.directory out)"
        )
    if options.enabled is False:
        raise ConfigError("--sync.enabled: got False; a launched chain needs its checkpoints published (true or auto)")
    prepared.checkpoints = options.dataset or f"{owner}/{experiment}-checkpoints"
    prepared.default_slug = experiment
    data_path = getattr(cli.datamodule, "path", None)
    _take_along(args, prepared, data_path if isinstance(data_path, str) else None)
    if options.dataset is None:
        prepared.args += ["--sync.dataset", prepared.checkpoints]


def _plan_sweep(args: list[str], prepared: PreparedCommand) -> None:
    name = _value_of(args, "--sweep.name")
    prepared.default_slug = name or "sweep-" + hashlib.sha256(json.dumps(args).encode()).hexdigest()[:8]
    _take_along(args, prepared, _data_path_in_configs(args))


def _value_of(args: list[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--flag value`` or ``--flag=value``)."""
    found = None
    for index, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name == flag:
            found = value if eq else (args[index + 1] if index + 1 < len(args) else None)
    return found


def _data_path_in_configs(args: list[str]) -> str | None:
    """``--data.path``, else the corpus the last config file that names one names (``data.init_args.path``)."""
    given = _value_of(args, _DATA_PATH)
    if given is not None:
        return given
    found = None
    for index, arg in enumerate(args[:-1]):
        if arg == _CONFIG:
            try:
                data = yaml.safe_load(Path(args[index + 1]).read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise ConfigError(f"--config: could not read {args[index + 1]!r} ({error})") from None
            section = data.get("data") if isinstance(data, dict) else None
            if isinstance(section, dict):
                init = section.get("init_args") if isinstance(section.get("init_args"), dict) else section
                if isinstance(init.get("path"), str):
                    found = init["path"]
    return found


def _take_along(args: list[str], prepared: PreparedCommand, data_path: str | None) -> None:
    """Fill ``prepared.args`` and ``prepared.files``: config files and the corpus become files of the code dataset."""
    corpus = _corpus_files(data_path) if data_path else []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in (_CONFIG, _DATA_PATH) and index + 1 < len(args):
            if arg == _CONFIG:
                prepared.args += [arg, {"code": _add_file(prepared, Path(args[index + 1]))}]
            index += 2  # --data.path: written once, below
            continue
        prepared.args.append(arg)
        index += 1
    if corpus:
        names = [_add_file(prepared, path, prefix=f"corpus-{n:04d}-") for n, path in enumerate(corpus)]
        # One file keeps its name; several are read back in their order by a glob over the prefix.
        target = {"code": names[0]} if len(names) == 1 else {"code": "corpus-*"}
        prepared.args += [_DATA_PATH, target]


def _corpus_files(path: str) -> list[Path]:
    """The files of a local corpus, in the order the text data reads them; none for a path not on this machine."""
    expanded = os.path.expanduser(path)
    if not (os.path.exists(expanded) or glob.glob(expanded, recursive=True)):
        return []  # e.g. a path under /kaggle/input: the kernel has it, not this machine
    from lightning_app.data.text import find_text_files

    return list(find_text_files(path))


def _add_file(prepared: PreparedCommand, path: Path, prefix: str = "") -> str:
    """Take ``path`` along; its name in the code dataset (made unique)."""
    if not path.is_file():
        raise ConfigError(f"launch: {str(path)!r} is not a file on this machine; the kernel needs its own copy")
    name = prefix + path.name
    stem, suffix = os.path.splitext(name)
    number = 1
    while name in prepared.files and prepared.files[name].resolve() != path.resolve():
        number += 1
        name = f"{stem}-{number}{suffix}"
    prepared.files[name] = path
    return name


def _parse_fit(args: list[str]):
    """The ``fit`` command parsed and its model and data made, as ``fit`` makes them, without a Trainer."""
    import logging

    from lightning_app.commands.fit import fit_command_line
    from lightning_app.module import LanguageModel

    planning_cli = _planning_cli_class()
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    with fit_command_line([]):  # LightningCLI warns when it is given args and sys.argv has some
        return planning_cli(
            LanguageModel,
            __import__("pytorch_lightning").LightningDataModule,
            subclass_mode_data=True,
            run=False,
            parser_kwargs={"exit_on_error": False},
            args=args,
        )


def _planning_cli_class():
    from lightning_app.commands.fit import TrainingCLI

    class PlanningCLI(TrainingCLI):
        """`TrainingCLI` up to its model and data: no Trainer, no store, no ``--resume``."""

        def instantiate_classes(self) -> None:
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self.config_init["data"]
            self.model = self.config_init["model"]

        def after_instantiate_classes(self) -> None:
            pass

    return PlanningCLI
