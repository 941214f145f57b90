"""Where a hub model's files are on this machine, from the folders alone: no network, no hub
library, so that `switch` and `lint` of a pulled model cost nothing more than of a file.

llama.cpp's `-hf` keeps files in the Hugging Face cache layout (common/hf-cache.cpp), in
`LLAMA_CACHE`, else `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`,
`XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`: `models--org--repo/refs/REV` holds
the commit, `snapshots/COMMIT/FILE` the complete files (a download in progress is a `.incomplete`
blob with no snapshot link yet). Both that folder and the Hugging Face cache are searched.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llmctl.hub.refs import HubRef, find_mmproj, find_model, parts_of, split_info

# (env var, sub-folder) in llama.cpp's order of precedence
CACHE_ENV = (
    ("LLAMA_CACHE", ""),
    ("HF_HUB_CACHE", ""),
    ("HUGGINGFACE_HUB_CACHE", ""),
    ("HF_HOME", "hub"),
    ("XDG_CACHE_HOME", "huggingface/hub"),
)
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _first_cache(env: tuple[tuple[str, str], ...]) -> Path:
    for var, sub in env:
        base = os.environ.get(var)
        if base:
            return Path(base) / sub if sub else Path(base)
    return Path.home() / ".cache" / "huggingface" / "hub"


def llama_cache_dir() -> Path:
    """The folder llama.cpp's `-hf` downloads into (and `llmctl pull` does)."""
    return _first_cache(CACHE_ENV)


def cache_dirs() -> list[Path]:
    """Every folder a pulled model may be in: llama.cpp's, then the Hugging Face cache."""
    return list(dict.fromkeys([llama_cache_dir(), _first_cache(CACHE_ENV[1:])]))


def repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


@dataclass(frozen=True)
class LocalModel:
    """A hub model complete on this machine: its parts in order, and its mmproj sibling."""

    parts: list[Path]
    mmproj: Path | None
    commit: str

    @property
    def path(self) -> Path:
        return self.parts[0]


def listing_path(repo: str, revision: str) -> Path:
    """Where llmctl keeps a repo's listing at a revision (llmctl.hub.remote writes it)."""
    from llmctl.paths import cache_dir

    name = revision.replace("/", "%2F") + ".json"
    return cache_dir() / "hub" / "listings" / repo_folder(repo) / name


def _listed(repo: str, revision: str) -> tuple[str, list[str]] | None:
    """The commit and file names of the listing `llmctl pull` and estimates keep, if any."""
    try:
        data = json.loads(listing_path(repo, revision).read_text())
        return str(data["commit"]), sorted(data["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _snapshot(cache: Path, ref: HubRef, listed_commit: str | None) -> tuple[Path, str] | None:
    """The snapshot folder of the revision: a commit as given, else the one `refs/REV` names,
    else the one llmctl's listing of it names."""
    folder = cache / repo_folder(ref.repo)
    if _COMMIT_RE.match(ref.revision):
        commit = ref.revision
    else:
        try:
            commit = (folder / "refs" / ref.revision).read_text().strip()
        except OSError:
            if listed_commit is None:
                return None
            commit = listed_commit
    snap = folder / "snapshots" / commit
    return (snap, commit) if snap.is_dir() else None


def write_ref(cache: Path, repo: str, revision: str, commit: str) -> None:
    """`refs/REV` -> commit, as huggingface_hub writes it for a download by branch or tag, so
    that `-hf` and other tools find the snapshot too."""
    if _COMMIT_RE.match(revision) or revision == commit:
        return
    path = cache / repo_folder(repo) / "refs" / revision
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(commit)
    tmp.replace(path)


def find_local(ref: HubRef) -> LocalModel | None:
    """The files of `ref` when every part is in a cache, else None. Which file a quant tag
    names is chosen among the repo's listing when one was kept (as the hub would choose), else
    among the files here; a reference without a tag needs that listing."""
    kept = _listed(ref.repo, ref.revision)
    listed = kept[1] if kept is not None else None
    for cache in cache_dirs():
        found = _snapshot(cache, ref, kept[0] if kept is not None else None)
        if found is None:
            continue
        snap, commit = found
        here = sorted(
            str(p.relative_to(snap)) for p in snap.rglob("*.gguf") if p.is_file()
        )  # is_file() follows the link: a dangling one is no file
        names = listed if listed is not None else here
        if ref.file:
            first: str | None = ref.file
        elif ref.tag or listed is not None:
            first = find_model(names, ref.tag)
        else:
            first = None  # which quant the hub would pick is unknown without its listing
        if first is None or first not in here:
            continue
        parts = parts_of(here, first)
        info = split_info(first)
        if info is not None and info.count > 1 and len(parts) != info.count:
            continue  # a split model with parts missing
        mm = find_mmproj(names, first)
        mmproj = snap / mm if mm is not None and mm in here else None
        return LocalModel([snap / p for p in parts], mmproj, commit)
    return None
