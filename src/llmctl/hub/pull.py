"""Download a hub model (every split part, and its mmproj) once, into the cache llama.cpp uses.

llama.cpp's `-hf` keeps files in the Hugging Face cache layout, in `LLAMA_CACHE`, else
`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`,
`~/.cache/huggingface/hub` (common/hf-cache.cpp): llmctl downloads there with huggingface_hub,
so llmctl, `llama-server -hf` and other hub tools share one copy.

A file the hub lists with a SHA-256 (every LFS file: GGUFs are) is fetched by huggingface_hub's
`http_get` into `blobs/SHA256.incomplete`, which an interrupted pull leaves behind and the next
one continues with a Range request (huggingface_hub's own `hf_hub_download` deletes a partial
file); once complete and matching the hub's SHA-256 it becomes the blob, linked from
`snapshots/COMMIT/FILE` as huggingface_hub links it. A file that does not match is deleted.
Other files go through `hf_hub_download`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.hub.local import llama_cache_dir, repo_folder, write_ref
from llmctl.hub.refs import HubRef, find_mmproj, parts_of
from llmctl.hub.remote import (
    HubError,
    Listing,
    RepoFile,
    endpoint,
    hub_errors,
    list_repo,
    offline,
    resolve_file,
)

__all__ = ["Pulled", "llama_cache_dir", "pull"]


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
        if have is not None:
            got = have
        elif entry.sha256 is not None:
            got = _resumable(listing, entry, cache, name, tqdm_class)
        else:
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
        out.append(Pulled(file, got, entry.size, entry.sha256, have is None))
    write_ref(cache, listing.repo, ref.revision, listing.commit)
    return out


def _resumable(listing: Listing, entry: RepoFile, cache: Path, name: str, tqdm_class: Any) -> Path:
    """Fetch one LFS file into the cache, continuing a partial download; the snapshot link."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    assert entry.sha256 is not None
    folder = cache / repo_folder(listing.repo)
    blob = folder / "blobs" / entry.sha256
    link = folder / "snapshots" / listing.commit / entry.path
    if not blob.is_file():
        partial = blob.with_name(blob.name + ".incomplete")
        url = hf_hub_url(listing.repo, entry.path, revision=listing.commit, endpoint=endpoint())
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            with hub_errors(name), open(partial, "ab") as fh:
                done = fh.tell()
                if done > entry.size:  # not this file's beginning: start again
                    fh.truncate(0)
                    done = 0
                http_get(
                    url,
                    fh,
                    resume_size=done,
                    headers=build_hf_headers(),
                    expected_size=entry.size,
                    displayed_filename=entry.path.rsplit("/", 1)[-1],
                    tqdm_class=tqdm_class,
                )
        except (OSError, HubError) as err:
            again = f"run the pull again: it continues from the {_size(partial)} already here"
            if isinstance(err, HubError) and err.hint:  # the hub error's own advice first
                again = f"{err.hint}; {again}"
            raise HubError(f"{name}: the download stopped: {err}", hint=again) from None
        digest = sha256_of(partial)
        if digest != entry.sha256:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise HubError(
                f"{name}: the download's SHA-256 is {digest}, the hub lists {entry.sha256}",
                hint="the file was deleted; run the pull again (a mirror behind HF_ENDPOINT "
                "may serve a stale copy)",
            )
        os.replace(partial, blob)
    link.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


def _size(path: Path) -> str:
    from llmctl.term import format_bytes

    try:
        return format_bytes(path.stat().st_size)
    except OSError:
        return "part"
