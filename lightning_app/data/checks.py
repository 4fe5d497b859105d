"""Validation of the data modules' constructor arguments, with errors that name the flag."""

from __future__ import annotations

from typing import Any

from lightning_app.errors import bad_value


def check_int(flag: str, value: Any, low: int) -> int:
    """Return ``value`` if it is an integer >= ``low``; otherwise raise the ConfigError that names ``flag``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_value(flag, value, f"an integer >= {low}")
    return value
