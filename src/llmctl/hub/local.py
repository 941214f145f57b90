"""A hub model already on this machine: where `llmctl pull` (or llama-server's `-hf`, or any
Hugging Face tool) put it, found from the cache's own layout, without the network and without
importing huggingface_hub (the everyday commands read it).

    local_model("hf://org/repo:Q4_K_M") -> Path | None   the first file, every split part there

The cache is the one `hub/pull.py` downloads into: `models--org--repo/refs/<revision>` names the
commit, `snapshots/<commit>/` holds the files.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmctl.errors import LlmctlError
from llmctl.hub.refs import find_model, is_hub_ref, parse_ref, parts_of

# (env var, sub-folder) in llama.cpp's order of precedence (pull.py downloads there too)
CACHE_ENV = (
    ("LLAMA_CACHE", ""),
    ("HF_HUB_CACHE", ""),
    ("HUGGINGFACE_HUB_CACHE", ""),
    ("HF_HOME", "hub"),
    ("XDG_CACHE_HOME", "huggingface/hub"),
)


def cache_dir() -> Path:
    """The folder llama.cpp's `-hf` downloads into."""
    for var, sub in CACHE_ENV:
        base = os.environ.get(var)
        if base:
            return Path(base) / sub if sub else Path(base)
    return Path.home() / ".cache" / "huggingface" / "hub"


def _snapshot(repo_dir: Path, revision: str) -> Path | None:
    ref = repo_dir / "refs" / revision
    try:
        commit = ref.read_text().strip() if ref.is_file() else revision
    except OSError:
        return None
    folder = repo_dir / "snapshots" / commit
    return folder if folder.is_dir() else None


def local_model(text: str, cache: Path | None = None) -> Path | None:
    """The local first file of the hub model `text` names, when it and all its split parts are
    in the cache; None otherwise (also for a malformed reference: the manifest reports those)."""
    if not is_hub_ref(text):
        return None
    try:
        ref = parse_ref(text)
    except LlmctlError:  # malformed: the manifest's validation names it
        return None
    repo_dir = (cache or cache_dir()) / ("models--" + ref.repo.replace("/", "--"))
    snap = _snapshot(repo_dir, ref.revision)
    if snap is None:
        return None
    try:
        files = sorted(
            str(p.relative_to(snap)) for p in snap.rglob("*.gguf") if p.is_file() or p.is_symlink()
        )
    except OSError:
        return None
    first = ref.file if ref.file in files else find_model(files, ref.tag) if not ref.file else None
    if first is None:
        return None
    parts = parts_of(files, first)
    if not all((snap / p).is_file() for p in parts):
        return None
    return snap / first
