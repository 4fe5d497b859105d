"""The one exception a user mistake becomes: printed as one line by the CLI, never as a traceback."""

from collections.abc import Iterable


class ConfigError(ValueError):
    """A setting the user chose cannot work. The message names the option, the value and what is accepted."""


def bad_value(option: str, value: object, accepted: str | Iterable[object]) -> ConfigError:
    """Build the standard message: ``--model.pe_type: got 'foo'; expected one of: sinusoidal, learned``.

    Args:
        option: the command-line flag, with its leading dashes.
        value: what the user gave.
        accepted: a phrase such as ``"an integer >= 1"``, or the accepted values.
    """
    if not isinstance(accepted, str):
        accepted = "one of: " + ", ".join(str(a) for a in accepted)
    return ConfigError(f"{option}: got {value!r}; expected {accepted}")
