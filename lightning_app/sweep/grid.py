"""The ``--sweep.*`` options and the grid: which settings the trials take, in which order, and how each is named.

The grid comes from ``--sweep.grid KEY=V1,V2,...`` (repeated options accumulate; values are split on commas, with
no escaping) or from a config file's ``sweep:`` section (``sweep: {grid: {model.pe_type: [rope, alibi]}}``); a grid
given on the command line replaces the config's. The trials are the product of the keys, the first key varying
slowest. Nothing here knows ``fit``'s options: `lightning_app.sweep.plan` checks each key and value with ``fit``'s
own parser.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_app.atomic import write_bytes_atomically
from lightning_app.errors import ConfigError, bad_value

GRID, PARALLEL, NAME, REPORT = "--sweep.grid", "--sweep.parallel", "--sweep.name", "--sweep.report"
SWEEP_OPTIONS = (GRID, PARALLEL, NAME, REPORT)
#: What the sweep sets for every trial itself: a grid over them (or ``--sync.dataset``) is refused.
RESERVED_KEYS = {
    "name": "each trial is named after the run and its grid values",
    "resume": "every trial resumes",
    "config": "config files are common to every trial",
    "ckpt_path": "every trial resumes from its own newest checkpoint",
    "checkpoint.dirpath": "each trial's folder is <checkpoint.dirpath>/<trial name>",
    "sync.dataset": "each trial's dataset is <owner>/<trial name>",
    "sync.directory": "each trial's versions go to <sync.directory>/<trial name>",
}
#: A sweep's name: a slug that leaves room for ``-report`` within Kaggle's 50 characters.
_SWEEP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{4,41}[a-z0-9])$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class GridKey:
    """One key of the grid and its values, as the user wrote them (each one is a ``fit`` option's value).

    Attributes:
        key: the option without its dashes, e.g. ``model.pe_type``.
        values: the values, in order.
    """

    key: str
    values: tuple[str, ...]


@dataclass
class SweepOptions:
    """The ``--sweep.*`` options.

    Attributes:
        grid: the keys and their values, the first varying slowest.
        parallel: ``"auto"`` (one trial per GPU with two or more GPUs, else one) or how many trials run at once.
        name: the sweep's name (its report dataset is ``<owner>/<name>-report``); None: ``sweep-<8 hex>``.
        report: write and publish the report of the trials finished so far, without training.
    """

    grid: list[GridKey] = field(default_factory=list)
    parallel: str | int = "auto"
    name: str | None = None
    report: bool = False


Assignment = tuple[tuple[str, str], ...]  # one trial's grid values: ((key, value), ...) in grid order


def split_sweep_args(argv: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--sweep.*`` options (``--sweep.grid X`` or ``--sweep.grid=X``; every occurrence kept) apart from the rest,
    which keeps its order."""
    sweep: dict[str, list[str]] = {}
    rest: list[str] = []
    items = list(argv)
    while items:
        arg = items.pop(0)
        flag, eq, value = arg.partition("=")
        if not flag.startswith("--sweep."):
            rest.append(arg)
            continue
        if flag not in SWEEP_OPTIONS:
            raise bad_value("option", flag, "one of: " + ", ".join(SWEEP_OPTIONS) + ", or a fit option")
        if not eq:
            if not items:
                raise bad_value(flag, None, "a value after it")
            value = items.pop(0)
        sweep.setdefault(flag, []).append(value)
    return sweep, rest


def parse_grid_option(text: str) -> GridKey:
    """``model.pe_type=rope,alibi`` -> ``GridKey("model.pe_type", ("rope", "alibi"))``."""
    key, eq, values = text.partition("=")
    if not eq:
        raise bad_value(GRID, text, "KEY=V1,V2,... (e.g. model.pe_type=rope,alibi)")
    return _grid_key(key, [v.strip() for v in values.split(",")], GRID)


def _grid_key(key: str, values: Sequence[str], option: str) -> GridKey:
    key = key.strip().removeprefix("--")
    if not _KEY.match(key):
        raise bad_value(GRID, key, "a fit option's name, e.g. model.pe_type")
    if key in RESERVED_KEYS or key.startswith("sweep."):
        why = RESERVED_KEYS.get(key, "the sweep's own options are not trial settings")
        raise bad_value(GRID, key, f"a fit option the sweep does not set itself ({why})")
    where = f"{option} {key}"
    if not values or values == [""]:
        raise bad_value(where, ",".join(values), "a non-empty list of values")
    if any(v == "" for v in values):
        raise bad_value(where, ",".join(values), "values that are not empty (split on commas, no escaping)")
    if len(set(values)) != len(values):
        raise bad_value(where, ",".join(values), "each value once")
    return GridKey(key, tuple(values))


def _as_text(value: object) -> str:
    """A YAML value as ``fit``'s command line takes it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def grid_from_yaml(section: object) -> list[GridKey]:
    """The ``grid`` of a config's ``sweep:`` section: a mapping of keys to lists of values."""
    if not isinstance(section, Mapping) or not section:
        raise bad_value("sweep.grid", section, "a mapping of fit options to lists of values")
    keys = []
    for key, values in section.items():
        listed = values if isinstance(values, list) else [values]
        keys.append(_grid_key(str(key), [_as_text(v) for v in listed], "sweep.grid"))
    return keys


def _boolean(option: str, text: object) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered not in _TRUE + _FALSE:
        raise bad_value(option, text, "true or false")
    return lowered in _TRUE


def _parallel(text: object) -> str | int:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        number = int(str(text))
    except ValueError:
        number = 0
    if number < 1:
        raise bad_value(PARALLEL, text, "auto, or how many trials run at once (an integer >= 1)")
    return number


def check_sweep_name(name: str) -> str:
    """``name`` when it can name the report's dataset (``<name>-report``); else a `ConfigError`."""
    if not _SWEEP_NAME.match(name):
        raise bad_value(NAME, name, "6 to 43 lower-case letters, digits or '-' (not first or last)")
    return name


def sweep_options(cli: Mapping[str, list[str]], section: Mapping[str, object] | None) -> SweepOptions:
    """The options from the command line (``cli``, from `split_sweep_args`) over a config's ``sweep:`` section."""
    section = dict(section or {})
    unknown = sorted(set(section) - {"grid", "parallel", "name", "report"})
    if unknown:
        raise bad_value("sweep", unknown[0], "one of: grid, parallel, name, report")
    options = SweepOptions()
    if GRID in cli:
        options.grid = [parse_grid_option(text) for text in cli[GRID]]
    elif "grid" in section:
        options.grid = grid_from_yaml(section["grid"])
    seen: set[str] = set()
    for grid_key in options.grid:
        if grid_key.key in seen:
            raise bad_value(GRID, grid_key.key, "each key once (give all its values in one KEY=V1,V2,...)")
        seen.add(grid_key.key)
    if not options.grid:
        raise bad_value(GRID, None, "at least one KEY=V1,V2,... (or a config's sweep: {grid: {KEY: [V1, V2]}})")
    if (parallel := (cli.get(PARALLEL) or [section.get("parallel", "auto")])[-1]) is not None:
        options.parallel = _parallel(parallel)
    if (name := (cli.get(NAME) or [section.get("name")])[-1]) is not None:
        options.name = check_sweep_name(str(name))
    options.report = _boolean(REPORT, (cli.get(REPORT) or [section.get("report", False)])[-1])
    return options


def assignments(grid: Sequence[GridKey]) -> list[Assignment]:
    """Every trial's grid values: the product of the keys, the first key varying slowest."""
    return [tuple(zip((k.key for k in grid), values)) for values in itertools.product(*(k.values for k in grid))]


def override_args(assignment: Assignment) -> list[str]:
    """``fit`` options for a trial's grid values: ``--model.pe_type=rope`` (one token: a value may start with -)."""
    return [f"--{key}={value}" for key, value in assignment]


def setting_label(assignment: Assignment) -> str:
    """``model.pe_type=rope, model.lr=0.001``."""
    return ", ".join(f"{key}={value}" for key, value in assignment)


def short_hash(data: object) -> str:
    """8 hex digits of the SHA-256 of ``data`` as canonical JSON."""
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


# -- config files with a sweep: section ---------------------------------------------------------------------------


def _config_paths(argv: Sequence[str]) -> Iterable[tuple[int, str, str]]:
    """``(index, flag, path)`` of every ``--config PATH`` / ``--config=PATH`` / ``-c PATH`` in ``argv``."""
    for index, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in ("--config", "-c"):
            if eq:
                yield index, flag, value
            elif index + 1 < len(argv):
                yield index + 1, "", argv[index + 1]


def take_sweep_sections(argv: Sequence[str], copies: Path) -> tuple[list[str], dict[str, object] | None]:
    """The ``sweep:`` sections of the config files ``argv`` names (merged, later files winning), and ``argv`` with
    each such file replaced by a copy without it, written into ``copies`` (``fit`` knows no ``sweep:`` key).

    A copy keeps the file's name, with 8 hex digits of its content added, so that the same config always makes
    the same copy; values in it that are paths stay relative to the working directory, as in the original.
    """
    args = list(argv)
    merged: dict[str, object] | None = None
    for index, flag, raw in list(_config_paths(args)):
        path = Path(raw)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue  # fit's parser says what is wrong with it
        if not isinstance(data, dict) or "sweep" not in data:
            continue
        section = data.pop("sweep")
        if not isinstance(section, Mapping):
            raise bad_value(f"sweep (in {raw})", section, "a mapping with grid, parallel, name or report")
        merged = {**(merged or {}), **section}
        text = yaml.safe_dump(data, sort_keys=False)
        copy = copies / f"{path.stem}-{short_hash(text)}{path.suffix or '.yaml'}"
        copies.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(copy, text.encode())
        args[index] = f"{flag}={copy}" if flag else str(copy)
    return args, merged


#: ``fit`` options a sweep refuses: it sets them for each trial (``--checkpoint.dirpath`` and ``--sync.directory``
#: are the base its trials' folders and versions go under; ``--resume`` is what every trial does anyway).
REFUSED_OPTIONS = ("name", "sync.dataset", "ckpt_path")


def refuse_options(argv: Sequence[str]) -> None:
    """One line for an option of ``fit`` that a sweep sets for each trial itself."""
    for arg in argv:
        flag = arg.partition("=")[0]
        if flag.startswith("--") and (key := flag.removeprefix("--")) in REFUSED_OPTIONS:
            raise ConfigError(f"{flag}: a sweep sets it for each trial ({RESERVED_KEYS[key]}); leave it out")
