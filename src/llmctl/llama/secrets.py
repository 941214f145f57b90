"""llama-server flags whose values are secrets, and command lines with those values masked.

Kept tiny (no imports): `llmctl status` masks the argv it shows.
"""

from __future__ import annotations

from collections.abc import Iterable

# --api-key takes one key or several, comma-separated; -hft/--hf-token a Hugging Face token
SECRET_FLAGS = frozenset({"--api-key", "-hft", "--hf-token"})
MASK = "***"


def mask_argv(argv: Iterable[str]) -> list[str]:
    """`argv` with the value of every secret flag (`--api-key X`, `--api-key=X`) replaced by ***."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
                continue
            hide_next = True
        out.append(arg)
    return out
