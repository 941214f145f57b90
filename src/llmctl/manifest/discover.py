"""Which manifest file to use, and how paths inside it are read. No YAML, no pydantic here."""

from __future__ import annotations

import os
from pathlib import Path

from llmctl.errors import ManifestError
from llmctl.paths import config_dir


def find_manifest(explicit: Path | str | None = None) -> Path:
    """--manifest, then $LLMCTL_MANIFEST, ./profiles.yaml, $XDG_CONFIG_HOME/llmctl/profiles.yaml."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("LLMCTL_MANIFEST")
    if env:
        return Path(env)
    here = Path("profiles.yaml")
    if here.is_file():
        return here
    user = config_dir() / "profiles.yaml"
    if user.is_file():
        return user
    raise ManifestError(
        "no manifest found",
        hint=(
            f"`llmctl init` writes {user} from the GGUF files on this machine; or pass "
            "--manifest PATH, set LLMCTL_MANIFEST, or create ./profiles.yaml"
        ),
    )


def expand_path(value: str, base: Path) -> str:
    """~ and $VARS expanded; relative paths are relative to the manifest's folder."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    p = Path(expanded)
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(str(p))
