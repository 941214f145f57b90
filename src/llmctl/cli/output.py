"""Output shared by the commands, and the one error renderer of the CLI.

Every error a user can act on (an LlmctlError) reaches the terminal through `render_error`: as text
on stderr, or with --json as `{"ok": false, "error": {...}}` on stdout, the error object being
`error_json(err)` wherever it appears (a switch result, one profile of `estimate --all`). No rich,
typer or pydantic here: the fast paths use it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from llmctl.errors import LaunchError, LlmctlError, ManifestError
from llmctl.term import DIM, style, width

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_PROBLEMS = 20
MAX_STDERR_LINES = 16


def print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def _style(text: str, code: str) -> str:
    return style(text, code, stderr=True)


def printable(value: object) -> str:
    """Text another machine supplied, safe to print: control characters (C0, DEL, C1, so no
    terminal escape sequence) and bidirectional overrides shown as `\\xNN`/`\\uNNNN` escapes."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def table(rows: list[list[str]], *, header: list[str] | None = None) -> list[str]:
    """Columns two spaces apart: the first left-aligned, the others right-aligned (figures)."""
    body = [header, *rows] if header else rows
    widths = [max(width(r[i]) for r in body) for i in range(len(body[0]))]

    def line(row: list[str]) -> str:
        cells = [
            cell + " " * (w - width(cell)) if i == 0 else " " * (w - width(cell)) + cell
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [style(line(header), DIM)] if header else []
    return out + [line(r) for r in rows]


def error_json(err: LlmctlError) -> dict[str, Any]:
    """The error object of every JSON output: type, message, hint, and what the error carries."""
    return err.to_json()


def error_lines(err: LlmctlError, *, indent: str = "") -> Iterator[str]:
    """The error as text lines: the message, its problems or llama-server's lines, the hint."""
    yield f"{indent}{_style('error:', '1;31')} {err.message}"
    if isinstance(err, ManifestError):
        for p in err.problems[:MAX_PROBLEMS]:
            where = f"{p.where()}: " if p.file else ""
            prof = f"[{p.profile}] " if p.profile else ""
            yield f"{indent}  {where}{prof}{p.message}"
            if p.hint:
                yield f"{indent}    {_style('hint:', '2')} {p.hint}"
        if len(err.problems) > MAX_PROBLEMS:
            more = len(err.problems) - MAX_PROBLEMS
            yield f"{indent}  ... and {more} more (llmctl lint shows them all)"
    if isinstance(err, LaunchError) and err.stderr_tail:
        yield f"{indent}{_style('llama-server said (error line first):', '2')}"
        for line in err.stderr_tail[:MAX_STDERR_LINES]:
            yield f"{indent}  | {line}"
    if err.hint:
        yield f"{indent}{_style('hint:', '2')} {err.hint}"


def render_error(err: LlmctlError, *, json_out: bool) -> int:
    """Show the error (text on stderr, or JSON on stdout) and return its exit code."""
    if json_out:
        print_json({"ok": False, "error": error_json(err)})
    else:
        sys.stderr.write("".join(line + "\n" for line in error_lines(err)))
        sys.stderr.flush()
    return err.exit_code


def run_command(json_out: bool, body: Callable[[], int]) -> int:
    """Run a command body: its exit code, or the rendered error's; Ctrl-C is exit 130."""
    try:
        return body()
    except LlmctlError as err:
        return render_error(err, json_out=json_out)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED


EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

if TYPE_CHECKING:
    from collections.abc import Callable
