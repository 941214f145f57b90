"""What a saved slot is tied to: the launch key a restore must match, and the folder of a profile.

`launch_key(argv, env)`: the same model file (path, size, mtime), the same llama-server build (the
binary and the llama/ggml libraries beside it), and the same command line apart from the flags that
cannot change what a slot's cache holds (`HARMLESS_FIELDS`). llama-server itself checks only the
layer count and cache types, and would restore the cache of another model with the same shapes.

`folder_name(profile)`: one name per profile name, and never the same name for two (see there).
Cheap to import: only the standard library at the top.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

# Profile fields whose flags cannot change what a slot's cache holds: a launch that differs from the
# saving one only in these (and in host, port, aliases, load mode) may restore its files. Anything
# else, extra_args included, is part of the key, so a rope or context change drops the files
# instead of restoring garbage.
HARMLESS_FIELDS = frozenset(
    {"threads", "threads_batch", "n_gpu_layers", "temp", "top_k", "top_p", "min_p",
     "repeat_penalty", "seed", "metrics"}
)  # fmt: skip

_PLAIN_MAX = 60  # longest profile name used as its folder name as it is


def _harmless() -> tuple[frozenset[str], frozenset[str]]:
    """(flags that take a value, switches) left out of the launch key, from llmctl's flag table."""
    from llmctl.llama.flags import FLAGS

    valued = {"--host", "--port", "-a", "--alias", "-lm", "--load-mode", "--slot-save-path"}
    switches = {"--mlock", "--mmap", "--no-mmap"}
    for f in FLAGS:
        if f.field in HARMLESS_FIELDS:
            (switches if f.kind == "switch" else valued).update(f.spellings)
    return frozenset(valued), frozenset(switches)


def _file_id(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _build_id(binary: str) -> list[str]:
    """The binary and the llama/ggml libraries beside it (a rebuild may change only those)."""
    import shutil

    exe = binary if os.sep in binary else (shutil.which(binary) or binary)
    ids = [_file_id(exe)]
    folder = os.path.dirname(os.path.realpath(exe))
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            if name.startswith(("libllama", "libggml", "libmtmd")) and ".so" in name:
                ids.append(_file_id(os.path.join(folder, name)))
    return ids


def cache_flags(argv: Sequence[str]) -> list[str]:
    """The command line (without the binary) minus the harmless flags and their values."""
    valued, switches = _harmless()
    out: list[str] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in switches or name in valued:
            i += 2 if name in valued and "=" not in arg else 1
            continue
        out.append(arg)
        i += 1
    return out


def _model_of(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("-m", "--model") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return ""


def launch_key(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """What a saved slot must match to be restored: model file, build, cache-shaping flags."""
    import hashlib
    import json

    ident = {
        "model": _file_id(_model_of(argv)),
        "build": _build_id(argv[0]) if argv else [],
        "flags": cache_flags(argv),
        "env": dict(sorted((env or {}).items())),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def folder_name(profile: str) -> str:
    """The folder of a profile's saved slots: a different name for every profile name.

    A plain name (lower-case letters, digits, `.`, `_`, `-`; not starting with `.`; at most 60
    characters) is its own folder name. Any other name maps to its cleaned form, `~` and the first
    16 hex digits of the SHA-256 of the whole name. A plain name never holds `~` (and never an
    upper-case letter), so a plain name and a hashed one never meet, not even on a file system that
    ignores case; two hashed names meet only if 64 bits of SHA-256 do.
    """
    import re

    if len(profile) <= _PLAIN_MAX and re.fullmatch(r"[a-z0-9_-][a-z0-9._-]*", profile):
        return profile
    import hashlib

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", profile)[:_PLAIN_MAX].lstrip(".")
    return f"{cleaned}~{hashlib.sha256(profile.encode()).hexdigest()[:16]}"
