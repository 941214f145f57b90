"""Which llama-server runs, and what it says of itself: `find_binary`; its flags (`--help`), devices
(`--list-devices`) and build (`--version`), each cached by the file identity of the binary and the
llama/ggml libraries beside it (`file_identity`), so a rebuilt or replaced llama-server is asked
again and an unchanged one is never started twice for the same question."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from llmctl.paths import cache_dir, on_path

_SPLIT = r"\s{2,}"  # compiled on first use, as the version patterns below
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
        for gap in re.finditer(_SPLIT, head):
            if head[gap.start() - 1] != ",":
                head = head[: gap.start()]
                break
        for piece in head.split(","):
            token = piece.strip().split(" ", 1)[0]
            if token.startswith("-") and len(token) > 1:
                flags.add(token)
    return frozenset(flags)


def _file_id(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def file_identity(binary: str) -> list[str] | None:
    """The binary and the llama/ggml libraries beside it (a rebuild may change only those), each
    as path, size and mtime; None when the binary does not exist."""
    exe = on_path(binary) or binary
    try:
        ids = [_file_id(exe)]
    except OSError:
        return None
    folder = os.path.dirname(os.path.realpath(exe))
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for name in names:
        if name.startswith(("libllama", "libggml", "libmtmd")) and ".so" in name:
            try:
                ids.append(_file_id(os.path.join(folder, name)))
            except OSError:
                continue
    return ids


def _cache_file(binary: str, kind: str, *extra: str) -> Path | None:
    """Where `kind` (help, devices, version) of `binary` is cached, keyed by its file identity;
    None when the binary does not exist."""
    ident = file_identity(binary)
    if ident is None:
        return None
    import zlib  # not hashlib: its OpenSSL import costs every command that reads a binary 2 ms

    key = "\0".join([str(_PARSER_VERSION), kind, *ident, *extra]).encode()
    return cache_dir() / f"{kind}-{zlib.crc32(key):08x}{zlib.adler32(key):08x}.json"


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
    import subprocess  # only when the cache has no answer: commands start without it

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


# patterns compiled on first use (re caches them): `llmctl command` imports this module for
# find_binary alone
_VERSION = r"version:\s*(\S+)\s*\(build\s*(\d+)(?:,\s*commit\s*(\S+?))?\)"


class LlamaBuild(NamedTuple):
    """llama-server's `--version`: the release, its build number and commit. (A NamedTuple, not
    a dataclass: made at import, it costs `llmctl command` and `switch` a tenth as much.)"""

    version: str
    build: int
    commit: str

    @property
    def label(self) -> str:
        return f"{self.version} (build {self.build}, commit {self.commit})"


# llama.cpp's own builds: `version: 9093 (b9093)`, `version: 11312 (1a2b3c4d)`
_VERSION_TAG = r"version:\s*(\d+)\s*\(([^)\s]+)\)"


def parse_version(text: str) -> LlamaBuild | None:
    """The build in `--version` output: the sdist form (`version: 0.5.0-dev (build 7, commit
    abc123)`) and llama.cpp's own (`version: 9093 (b9093)`, `version: 11312 (1a2b3c4)`)."""
    m = re.search(_VERSION, text)
    if m:
        return LlamaBuild(m[1], int(m[2]), m[3] or "unknown")
    t = re.search(_VERSION_TAG, text)
    if t:
        number, inner = t[1], t[2]
        commit = "unknown" if inner.lstrip("b") == number else inner
        return LlamaBuild(f"b{number}", int(number), commit)
    return None


def llama_build(binary: str, timeout: float = 30.0) -> LlamaBuild | None:
    """Ask the binary for its version, cached by file identity (None when it cannot say)."""
    cache = _cache_file(binary, "version")
    known = _cached(cache)
    if isinstance(known, list) and len(known) == 3:
        return LlamaBuild(str(known[0]), int(known[1]), str(known[2]))
    text = _run(binary, "--version", timeout)
    found = parse_version(text) if text is not None else None
    if found is not None:
        _keep(cache, [found.version, found.build, found.commit])
    return found


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
    return on_path("llama-server")
