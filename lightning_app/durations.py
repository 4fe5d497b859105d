"""Durations on the command line: ``00:30:00``, ``1:02:03:04`` (days first), ``90s``, ``45m``, ``11.5h``."""

import re
from datetime import timedelta

from lightning_app.errors import bad_value

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ACCEPTED = "a duration such as 00:30:00, 1:00:00:00 (days first), 90s, 45m or 11.5h"


def parse_duration(option: str, value: str | int | float | timedelta | None) -> timedelta | None:
    """``value`` as a positive timedelta; None stays None. Errors name ``option``."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text):
            seconds = float(match[1]) * _UNITS[match[2]]
        elif re.fullmatch(r"\d+(?::\d+){1,3}(?:\.\d+)?", text):
            parts = [float(p) for p in text.split(":")]
            seconds = sum(p * w for p, w in zip(reversed(parts), (1, 60, 3600, 86400)))
        else:
            raise bad_value(option, value, _ACCEPTED)
    if seconds <= 0:
        raise bad_value(option, value, _ACCEPTED + ", longer than zero")
    return timedelta(seconds=seconds)
