"""A small parser for the everyday invocations, so they run without typer.

It accepts only what it fully understands: the options it is given, `--opt value` and
`--opt=value`, and the right number of positional arguments. Anything else (`--help`, an unknown
option, a value that does not convert, a missing argument) returns None, and typer parses the
command line instead, with its usual messages. So this parser never reports an error itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def parse(
    args: list[str],
    *,
    flags: Mapping[str, str] | None = None,
    options: Mapping[str, tuple[str, Callable[[str], Any]]] | None = None,
    positional: tuple[int, int] = (0, 0),
) -> tuple[list[str], dict[str, Any]] | None:
    """(positional arguments, {dest: value}) or None. `flags` maps each spelling to a dest set to
    True; `options` maps each spelling to (dest, converter); `positional` is (min, max)."""
    flags = flags or {}
    options = options or {}
    values: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("-") and arg != "-":
            name, eq, inline = arg.partition("=")
            if name in flags and not eq:
                values[flags[name]] = True
            elif name in options:
                if not eq:
                    if i >= len(args):
                        return None
                    inline = args[i]
                    i += 1
                dest, convert = options[name]
                try:
                    values[dest] = convert(inline)
                except ValueError:
                    return None
            else:
                return None
        else:
            rest.append(arg)
    low, high = positional
    if not low <= len(rest) <= high:
        return None
    return rest, values


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise ValueError(text)
    return value


# the spellings that the commands which change servers share (typer's options in cli/options.py)
CHANGE_FLAGS = {"--json": "json_out", "--quiet": "quiet", "-q": "quiet"}
PULL_FLAG = {"--pull": "pull"}  # switch, load: download a hub model not pulled yet
CHANGE_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--manifest": ("manifest", str),
    "--lock-timeout": ("lock_timeout", non_negative_float),
}


def drop_manifest(args: list[str]) -> list[str]:
    """`args` without `--manifest PATH` / `--manifest=PATH`: for the commands that read only the
    state (status, stop, logs), which accept the option like every command and need nothing of it."""
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--manifest" and i + 1 < len(args):
            i += 2
            continue
        if not args[i].startswith("--manifest="):
            out.append(args[i])
        i += 1
    return out
