"""The flags an installed llama-server knows, read from its `--help` and cached by path and mtime."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

from llmctl.paths import cache_dir

_SPLIT = re.compile(r"\s{2,}")
_PARSER_VERSION = 2  # part of the cache key: bump when parse_help changes


def parse_help(text: str) -> frozenset[str]:
    """Every flag spelling in llama-server's `--help` text (`-c`, `--ctx-size`, `-no-kvu`, ...)."""
    flags: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("-"):
            continue
        # The flag column ends at the first wide gap that does not follow a comma
        # ("-a,    --alias STRING      set model name ...").
        head = line.rstrip()
        for gap in _SPLIT.finditer(head):
            if head[gap.start() - 1] != ",":
                head = head[: gap.start()]
                break
        for piece in head.split(","):
            token = piece.strip().split(" ", 1)[0]
            if token.startswith("-") and len(token) > 1:
                flags.add(token)
    return frozenset(flags)


def known_flags(binary: str, timeout: float = 15.0) -> frozenset[str] | None:
    """Flags of `binary`, or None when it cannot be run. Cached per path, mtime and size."""
    try:
        st = os.stat(binary)
    except OSError:
        return None
    key = hashlib.sha256(
        f"{_PARSER_VERSION}\0{os.path.realpath(binary)}\0{st.st_mtime_ns}\0{st.st_size}".encode()
    )
    cache = cache_dir() / f"help-{key.hexdigest()[:20]}.json"
    try:
        return frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    try:
        proc = subprocess.run(
            [binary, "--help"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            errors="replace",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    flags = parse_help(proc.stdout + "\n" + proc.stderr)
    if len(flags) < 10:  # not llama-server's help
        return None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(flags)))
        os.replace(tmp, cache)
    except OSError:
        pass
    return flags


def binary_version(binary: str) -> str | None:
    try:
        proc = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            errors="replace",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return None


def is_gguf(path: Path) -> bool | None:
    """True/False from the magic bytes; None when the file cannot be read."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return None
