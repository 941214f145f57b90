"""Download a hub model (every split part, and its mmproj) once, into the cache llama.cpp uses.

llama.cpp's `-hf` keeps files in the Hugging Face cache layout, in `LLAMA_CACHE`, else
`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`,
`~/.cache/huggingface/hub` (common/hf-cache.cpp): llmctl downloads there with huggingface_hub,
so llmctl, `llama-server -hf` and other hub tools share one copy. huggingface_hub resumes an
interrupted download from its `.incomplete` file; the SHA-256 the hub lists is checked after,
and a file that does not match is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.hub.local import cache_dir as llama_cache_dir  # re-exported: where pull writes
from llmctl.hub.refs import HubRef, find_mmproj, parts_of
from llmctl.hub.remote import (
    HubError,
    Listing,
    endpoint,
    hub_errors,
    list_repo,
    offline,
    resolve_file,
)


@dataclass(frozen=True)
class Pulled:
    file: str
    path: Path
    size: int
    sha256: str | None
    downloaded: bool  # False when it was in the cache already


def planned_files(ref: HubRef, listing: Listing, *, with_mmproj: bool = True) -> list[str]:
    """The files a pull of `ref` fetches: the model's parts, then its mmproj."""
    names = sorted(listing.files)
    first = resolve_file(ref, listing)
    files = parts_of(names, first)
    mm = find_mmproj(names, first) if with_mmproj else None
    return files + ([mm] if mm else [])


def cached_path(listing: Listing, file: str, cache: Path | None = None) -> Path | None:
    """The file in the cache when it is complete there, else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        listing.repo, file, cache_dir=cache or llama_cache_dir(), revision=listing.commit
    )
    return Path(found) if isinstance(found, str) else None


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


def pull(
    ref: HubRef,
    *,
    cache: Path | None = None,
    with_mmproj: bool = True,
    tqdm_class: Any = None,
    on_file: Callable[[str, int, bool], None] | None = None,
) -> list[Pulled]:
    """Fetch every file of `ref` into `cache` (llama.cpp's by default), verified.

    `on_file(file, size, cached)` is called before each file; `tqdm_class` draws the progress
    bar (huggingface_hub's own when None). HubError for every hub or checksum failure.
    """
    from huggingface_hub import hf_hub_download

    cache = cache or llama_cache_dir()
    listing = list_repo(ref.repo, ref.revision)
    out = []
    for file in planned_files(ref, listing, with_mmproj=with_mmproj):
        entry = listing.files[file]
        have = cached_path(listing, file, cache)
        if on_file is not None:
            on_file(file, entry.size, have is not None)
        name = f"{ref.with_file(file)}"
        if have is None and offline():
            raise HubError(
                f"{name}: not in {cache}, and HF_HUB_OFFLINE is set",
                hint="unset HF_HUB_OFFLINE to download it",
            )
        with hub_errors(name):
            got = Path(
                hf_hub_download(
                    listing.repo,
                    file,
                    revision=listing.commit,
                    cache_dir=cache,
                    endpoint=endpoint(),
                    tqdm_class=tqdm_class,
                )
            )
        if have is None and entry.sha256 is not None:
            digest = sha256_of(got)
            if digest != entry.sha256:
                _discard(got)
                raise HubError(
                    f"{name}: the download's SHA-256 is {digest}, the hub lists {entry.sha256}",
                    hint="the file was deleted; run the pull again (a mirror behind HF_ENDPOINT "
                    "may serve a stale copy)",
                )
        out.append(Pulled(file, got, entry.size, entry.sha256, have is None))
    _record_revision(cache, listing.repo, ref.revision, listing.commit)
    return out


def _record_revision(cache: Path, repo: str, revision: str, commit: str) -> None:
    """`refs/<revision>` -> commit, as huggingface_hub writes it when it downloads by branch:
    a profile's `hf://` reference then finds the file offline (hub/local.py)."""
    if revision == commit:
        return
    ref = cache / ("models--" + repo.replace("/", "--")) / "refs" / revision
    with contextlib.suppress(OSError):
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def _discard(path: Path) -> None:
    """Remove a snapshot link and the blob it points at."""
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
