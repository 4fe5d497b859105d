"""Each trial checked with ``fit``'s own parser before any training, named, and given its ``fit`` command line.

The common options are parsed once, then every grid value with its option's own type (one line naming the key and
the value when it is refused), then every trial: its classes are made as ``fit`` makes them (the model on the meta
device: nothing is allocated), so that a value a constructor refuses, or a sequence the positional encoding cannot
hold, stops the sweep before anything trains. A trial's name is ``<experiment name>-<8 hex of its grid values>``: the
experiment name ``fit`` would give it (its model and data), so that a grid over a training knob (``model.lr``,
``data.batch_size``) still gives each trial its own folder, logs and dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_app.commands.fit import TrainingCLI, expand_aliases, one_line, with_default_config
from lightning_app.errors import ConfigError, bad_value
from lightning_app.experiment import check_run_name, experiment_name
from lightning_app.module import LanguageModel
from lightning_app.sweep.grid import (
    GRID,
    Assignment,
    GridKey,
    SweepOptions,
    assignments,
    override_args,
    setting_label,
    short_hash,
)

log = logging.getLogger("lightning_app.sweep")

#: Trainer settings that decide what a trial trains (with the model, the data, the seed and the grid): the default
#: sweep name hashes them, so that the same command names the same sweep in every session, on any machine.
TRAINING_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "accumulate_grad_batches", "gradient_clip_val")


@dataclass
class Trial:
    """One setting of the grid, trained by its own ``fit --resume``.

    Attributes:
        name: ``<experiment name>-<8 hex of its grid values>``: its run name, log folder and dataset slug.
        assignment: its grid values, ``((key, value), ...)``.
        args: what its ``fit`` adds to the common options: its grid values.
        settings: the model's architecture (``LanguageModel.settings``).
        data: its ``data`` section (``class_path``, ``init_args``), for scoring it at other lengths.
        state_bytes: weights and AdamW moments: about what one checkpoint holds.
    """

    name: str
    assignment: Assignment
    args: list[str]
    settings: dict[str, object]
    data: dict
    state_bytes: int

    @property
    def label(self) -> str:
        """``model.pe_type=rope``: the trial's grid values as the user wrote them."""
        return setting_label(self.assignment)

    @property
    def values(self) -> str:
        """``rope``, ``rope, 0.001``: the trial's grid values alone (a figure's legend names the keys)."""
        return ", ".join(value for _key, value in self.assignment)

    @property
    def train_len(self) -> int | None:
        return self.data.get("init_args", {}).get("seq_len")


@dataclass
class SweepPlan:
    """What a sweep runs, decided before anything trains.

    Attributes:
        name: the sweep's name (``--sweep.name``, default ``sweep-<8 hex>``).
        options: the ``--sweep.*`` options.
        common: the ``fit`` options every trial shares (config files without their ``sweep:`` section).
        trials: in grid order.
        checkpoints: ``--checkpoint.dirpath``: each trial's folder is ``<checkpoints>/<trial name>``.
        sync: the ``--sync.*`` settings, as ``fit`` parsed them.
        restore: the ``--restore.*`` settings.
        deadline: the ``--deadline.*`` settings.
        accelerator: ``--trainer.accelerator``.
        devices: ``--trainer.devices``.
    """

    name: str
    options: SweepOptions
    common: list[str]
    trials: list[Trial]
    checkpoints: Path
    sync: dict
    restore: dict
    deadline: dict
    accelerator: object = "auto"
    devices: object = "auto"
    logs: Path = field(default_factory=lambda: Path("logs"))

    def folder(self, trial: Trial) -> Path:
        return self.checkpoints / trial.name


def _on_meta_device(cls, *args, **kwargs):
    """Make a model as ``fit`` would, without allocating it: its settings and checks are all the sweep needs."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


class TrialCheck(TrainingCLI):
    """``fit``'s parser and classes, without a Trainer, a store or training (see the module's docstring).

    Built once (parsing ``args``, the common options); `check` parses and instantiates one trial's options.
    """

    def before_instantiate_classes(self) -> None:
        self._data: dict[str, pl.LightningDataModule] = {}
        self.parser.add_instantiator(_on_meta_device, LanguageModel, prepend=True)
        self.parser.add_instantiator(self._data_once, pl.LightningDataModule, prepend=True)

    def _data_once(self, cls, *args, **kwargs):
        """One data module per distinct data section: trials that share it (a grid over model settings) share one,
        since a data module may build its data when made (the synthetic data does: seconds at full size)."""
        key = json.dumps([cls.__module__, cls.__qualname__, args, kwargs], sort_keys=True, default=repr)
        if key not in self._data:
            self._data[key] = cls(*args, **kwargs)
        return self._data[key]

    def instantiate_classes(self) -> None:
        """Nothing yet: `check` instantiates each trial's classes."""

    def after_instantiate_classes(self) -> None:
        """Nothing: no Trainer is made."""

    def parse(self, args: Sequence[str]):
        """The parsed config of ``args``; raises what the parser raises."""
        return self.parser.parse_args(list(args))

    def instantiate(self, config):
        """The classes of a parsed config (the model on the meta device), checked as ``fit`` checks them."""
        init = self.parser.instantiate_classes(config)
        model, data = init["model"], init["data"]
        if (seq_len := getattr(data, "seq_len", None)) is not None:
            model.model.check_sequence_length(seq_len)
        return init


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Parsing and instantiating print nothing the user needs (seeding, jsonargparse's deprecations)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning = logging.getLogger("lightning_fabric.utilities.seed")
        level = lightning.level
        lightning.setLevel(logging.WARNING)
        try:
            yield
        finally:
            lightning.setLevel(level)
            if seed is None:  # seeding sets it; the trials must not inherit the sweep's
                os.environ.pop("PL_GLOBAL_SEED", None)
            else:
                os.environ["PL_GLOBAL_SEED"] = seed


def _checker(common: list[str]) -> TrialCheck:
    try:
        with _quiet():
            return TrialCheck(
                LanguageModel,
                pl.LightningDataModule,
                subclass_mode_data=True,
                parser_kwargs={"exit_on_error": False},
                args=common,
                run=False,
                load_from_checkpoint_support=False,
            )
    except Exception as error:
        raise _one_line_or_raise(error) from None


_EXPECTED_TYPE = re.compile(r"Expected an? <class '([\w.]+)'>")
_EXPECTED_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\]")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_GIVEN = re.compile(r"Given value: (.*)")


def _one_line_or_raise(error: Exception) -> ConfigError:
    """`fit`'s one line for a mistake in the common options, naming the accepted types where it could not."""
    message = one_line(error)
    if message is None:
        raise error
    text = str(error)
    types = sorted({name.replace("NoneType", "null") for name in _EXPECTED_TYPE.findall(text)})
    keys, given = _PARSER_KEY.findall(text), _GIVEN.search(text)
    if "Does not validate" in message and types and keys and given:
        return bad_value(f"--{keys[0]}", given[1].strip(), "a value of type " + " or ".join(types))
    return ConfigError(message)


def _grid_value_error(grid_key: GridKey, value: str, error: Exception) -> ConfigError:
    """One line for a grid value (or key) that ``fit`` refuses: what was wrong, the value, what is accepted."""
    text = str(error)
    if "nrecognized arguments" in text or "is not accepted" in text or "No action for" in text:
        return bad_value(GRID, grid_key.key, "a fit option (python -m lightning_app fit --help lists them)")
    message = one_line(error)
    if type(error).__name__ == "ArgumentError":
        if literal := _EXPECTED_LITERAL.search(text):
            accepted = "one of: " + ", ".join(a.strip().strip("'\"") for a in literal[1].split(","))
            return bad_value(f"{GRID} {grid_key.key}", value, accepted)
        types = sorted({name.replace("NoneType", "null") for name in _EXPECTED_TYPE.findall(text)})
        if types:
            return bad_value(f"{GRID} {grid_key.key}", value, "a value of type " + " or ".join(types))
    if message is None:
        raise error
    return ConfigError(f"{GRID} {grid_key.key}={value}: {message}")


def _as_plain(value: object) -> object:
    """A parsed value as plain data (jsonargparse's namespaces as dicts)."""
    return value.as_dict() if hasattr(value, "as_dict") else value


def _value_at(config, key: str) -> object:
    """The parsed value of ``key`` in ``config`` (``data.batch_size`` lives at ``data.init_args.batch_size``)."""
    head, _, rest = key.partition(".")
    for candidate in (key, f"{head}.init_args.{rest}" if rest else key):
        with contextlib.suppress(KeyError, AttributeError, TypeError):
            return _as_plain(config[candidate])
    return None


def make_plan(argv: Sequence[str], options: SweepOptions) -> SweepPlan:
    """Check the common options, every grid value and every trial, and name them (see the module's docstring).

    Args:
        argv: the ``fit`` options every trial shares (aliases and the default config not yet applied).
        options: the ``--sweep.*`` options.
    """
    common = with_default_config(["fit", *expand_aliases(list(argv))])[1:]
    check = _checker(common)
    base = check.config
    if base["sync"]["dataset"] is not None:
        raise bad_value("--sync.dataset", base["sync"]["dataset"], "no value: each trial's dataset is <owner>/<trial>")
    if base["name"] is not None:
        raise bad_value("--name", base["name"], "no value: each trial is named after its run and grid values")
    parsed: dict[tuple[str, str], object] = {}
    for grid_key in options.grid:
        for value in grid_key.values:
            with _quiet():
                try:
                    config = check.parse([*common, *override_args(((grid_key.key, value),))])
                except Exception as error:
                    raise _grid_value_error(grid_key, value, error) from None
            parsed[grid_key.key, value] = _value_at(config, grid_key.key)
    trials = [_trial(check, common, assignment, parsed) for assignment in assignments(options.grid)]
    _refuse_twins(trials)
    trainer = base["trainer"]
    name = options.name or "sweep-" + short_hash(
        {
            "grid": [[k.key, list(k.values)] for k in options.grid],
            "seed": _as_plain(base["seed_everything"]),
            "model": _as_plain(base["model"]),
            "data": _as_plain(base["data"]),
            "trainer": {key: _as_plain(trainer[key]) for key in TRAINING_KEYS if key in trainer},
        }
    )
    return SweepPlan(
        name=name,
        options=options,
        common=common,
        trials=trials,
        checkpoints=Path(base["checkpoint"]["dirpath"]),
        sync=_as_plain(base["sync"]),
        restore=_as_plain(base["restore"]),
        deadline=_as_plain(base["deadline"]),
        accelerator=_as_plain(trainer["accelerator"]),
        devices=_as_plain(trainer["devices"]),
    )


def _trial(check: TrialCheck, common: list[str], assignment: Assignment, parsed: dict) -> Trial:
    args = override_args(assignment)
    with _quiet():
        try:
            config = check.parse([*common, *args])
            init = check.instantiate(config)
        except Exception as error:
            message = one_line(error)
            if message is None:
                raise
            raise ConfigError(f"{GRID} {setting_label(assignment)}: {message}") from None
    model, data = init["model"], init["data"]
    identity = data.identity() if hasattr(data, "identity") else {}
    experiment = experiment_name(model.settings(), identity)
    values = {key: parsed.get((key, value), value) for key, value in assignment}
    name = check_run_name(f"the name of trial {setting_label(assignment)}", f"{experiment}-{short_hash(values)}")
    state_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return Trial(name, assignment, args, model.settings(), _as_plain(config["data"]), state_bytes)


def _refuse_twins(trials: list[Trial]) -> None:
    """Two settings that ``fit`` reads the same (``1e-3`` and ``0.001``) would be one trial twice."""
    seen: dict[str, Trial] = {}
    for trial in trials:
        if (twin := seen.get(trial.name)) is not None:
            raise bad_value(GRID, trial.label, f"values that differ from {twin.label} once parsed")
        seen[trial.name] = trial
