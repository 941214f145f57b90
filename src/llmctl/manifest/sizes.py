"""Byte sizes and durations as people write them: `24GiB`, `24 GB`, `512MiB`, `90s`, `2m`."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|)\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as `24GiB`, `24 GB`, `1.5G` (G = 10^9, GiB = 2^30)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 24GiB, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a size must be a finite number of bytes >= 0, not {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("expected a size such as 24GiB or 24 GB")
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; write it like 24GiB, 24 GB or 512MiB")
    size = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(f"{value!r} is too large to be a size")
    return round(size)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as `90s`, `2m`, `500ms`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 120s, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number of seconds >= 0, not {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 120s or 2m")
    match = _DURATION.match(value.lower())
    if not match:
        raise ValueError(f"cannot read {value!r} as a duration; write it like 120s, 2m or 500ms")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is too long to be a duration")
    return seconds
