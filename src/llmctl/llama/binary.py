"""What an installed llama-server says of itself: its flags (`--help`), devices
(`--list-devices`) and version, the first two cached by path, mtime and size."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

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


def _cache_file(binary: str, kind: str, *extra: str) -> Path | None:
    """Where `kind` (help, devices) of `binary` is cached: keyed by its path, mtime and size, so a
    rebuilt or replaced llama-server is asked again; None when the binary does not exist."""
    try:
        st = os.stat(binary)
    except OSError:
        return None
    parts = [str(_PARSER_VERSION), kind, os.path.realpath(binary), str(st.st_mtime_ns)]
    key = hashlib.sha256("\0".join([*parts, str(st.st_size), *extra]).encode())
    return cache_dir() / f"{kind}-{key.hexdigest()[:20]}.json"


def _cached(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _keep(path: Path | None, value: Any) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:
        pass


def _run(binary: str, flag: str, timeout: float) -> str | None:
    """`binary FLAG`'s output (stdout and stderr), without llama-server's LLAMA_ARG_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    try:
        proc = subprocess.run(
            [binary, flag],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            errors="replace",
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout + "\n" + proc.stderr


def known_flags(binary: str, timeout: float = 15.0) -> frozenset[str] | None:
    """Flags of `binary`, or None when it cannot be run. Cached per path, mtime and size."""
    cache = _cache_file(binary, "help")
    hit = _cached(cache)
    if isinstance(hit, list):
        return frozenset(hit)
    text = _run(binary, "--help", timeout) if cache is not None else None
    if text is None:
        return None
    flags = parse_help(text)
    if len(flags) < 10:  # not llama-server's help
        return None
    _keep(cache, sorted(flags))
    return flags


def parse_devices(text: str) -> list[str] | None:
    """Device names in `llama-server --list-devices` output (CPU is never listed); None when the
    output is not that list."""
    names: list[str] = []
    started = False
    for line in text.splitlines():
        if line.startswith("Available devices"):
            started = True
            continue
        if started and line.startswith("  ") and ":" in line:
            names.append(line.strip().split(":", 1)[0])
    return names if started else None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def list_devices(binary: str, timeout: float = 10.0) -> list[str] | None:
    """The devices `binary --list-devices` names (CPU not included); None if it cannot be run.
    Cached per binary and boot (a GPU or driver added since is seen after a restart, which it
    needs anyway), so commands that check for a GPU do not start llama-server each time."""
    cache = _cache_file(binary, "devices", _boot_id())
    hit = _cached(cache)
    if isinstance(hit, list):
        return [str(n) for n in hit]
    text = _run(binary, "--list-devices", timeout) if cache is not None else None
    names = None if text is None else parse_devices(text)
    if names is not None:
        _keep(cache, names)
    return names


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


def find_binary(configured: str | None = None) -> str | None:
    """$LLMCTL_LLAMA_SERVER, then `configured` (server.binary), then llama-server on PATH; None when
    none is found."""
    env = os.environ.get("LLMCTL_LLAMA_SERVER")
    if env:
        return os.path.expanduser(env)
    if configured:
        return configured
    from llmctl.paths import on_path

    return on_path("llama-server")
