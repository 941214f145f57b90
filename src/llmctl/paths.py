"""Where llmctl keeps its files. Environment variables win, then XDG, then the defaults."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def state_dir() -> Path:
    """State file, lock and logs: `LLMCTL_STATE_DIR`, else `$XDG_STATE_HOME/llmctl`."""
    value = os.environ.get("LLMCTL_STATE_DIR")
    return Path(value) if value else _xdg("XDG_STATE_HOME", ".local/state") / "llmctl"


def engine_plans_file() -> Path:
    """The engine's memory plans and the needs loads showed, by launch key (memory.engine)."""
    return state_dir() / "engine-plans.json"


def cache_dir() -> Path:
    """Caches (llama-server --help, test bed builds): `LLMCTL_CACHE_DIR`, else `$XDG_CACHE_HOME/llmctl`."""
    value = os.environ.get("LLMCTL_CACHE_DIR")
    return Path(value) if value else _xdg("XDG_CACHE_HOME", ".cache") / "llmctl"


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "llmctl"


def on_path(name: str) -> str | None:
    """The executable `name` on $PATH, as `shutil.which` finds it, without importing shutil
    (which brings bz2 and lzma along) into commands that only look for nvidia-smi. A name with a
    slash is that file, as for shutil.which."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


HUB_SCHEME = "hf://"  # a model on the Hugging Face hub rather than a path (llmctl.hub.refs)


def is_hub_model(value: object) -> bool:
    """`value` names a hub model (`hf://org/repo...`), not a file: told apart without importing
    anything of llmctl.hub, so that commands on a manifest of files never load it."""
    return isinstance(value, str) and value.startswith(HUB_SCHEME)
