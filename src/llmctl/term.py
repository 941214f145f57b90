"""How text reaches a terminal: ANSI styles (only on a terminal, never with NO_COLOR), the printed
width of styled text, and `format_bytes`, the one way every surface writes a size."""

from __future__ import annotations

import os
import sys

BOLD, DIM, RED, GREEN, YELLOW, CYAN = "1", "2", "31", "32", "33", "36"


def style(text: str, code: str, *, stderr: bool = False) -> str:
    """ANSI style when that stream is a terminal (and NO_COLOR is unset), plain text otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    if os.environ.get("NO_COLOR") or not stream.isatty():
        return text
    return f"\x1b[{code}m{text}\x1b[0m"


def width(text: str) -> int:
    """Printed width: ANSI styles take no room."""
    if "\x1b[" not in text:
        return len(text)
    import re

    return len(re.sub(r"\x1b\[[0-9;]*m", "", text))


def format_bytes(n: int | float) -> str:
    """`1.50 GiB`, `512.00 MiB`: binary units, two decimals, as llama-server prints MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.2f} GiB"  # pragma: no cover
