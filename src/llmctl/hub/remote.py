"""A hub repo's GGUF headers without its weights: the listing (sizes, SHA-256) through
huggingface_hub, and each file's header and tensor table by HTTP Range reads fed to
llmctl's GGUF reader (llama/gguf.py), a few MB for a file of any size.

A server that answers a Range request with the whole file is refused, not read. Headers are
cached by repo, commit and file in llmctl's cache folder; listings by repo and revision, so
HF_HUB_OFFLINE works from what was read before. HF_TOKEN (never printed), HF_ENDPOINT and
HF_HUB_DOWNLOAD_TIMEOUT are honoured. With `network=False` only what was kept answers (else
NotCached). huggingface_hub is imported only in the functions that talk to the hub.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.errors import LlmctlError
from llmctl.hub.local import listing_path, repo_folder
from llmctl.hub.refs import HubRef, find_mmproj, find_model, models, parts_of
from llmctl.llama.gguf import GGUFFile, read_gguf_stream

DEFAULT_ENDPOINT = "https://huggingface.co"
FIRST_READ = 1 << 20  # the first range read; the reader asks for twice as much until it parses
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(LlmctlError):
    """The hub could not answer: the repo, revision, file or server, and what to do. Exits 1 (the
    operation failed), a missing repo or file as much as an unreachable server."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", "10"))
    except ValueError:
        return 10.0


def _cache_root() -> Path:
    from llmctl.paths import cache_dir

    return cache_dir() / "hub"


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None  # the LFS object id; None for files kept in git itself


@dataclass(frozen=True)
class Listing:
    """A repo at one commit: its files by path."""

    repo: str
    revision: str
    commit: str
    files: dict[str, RepoFile]

    def gguf_models(self) -> list[str]:
        return models(sorted(self.files))

    def size_of(self, paths: list[str]) -> int:
        return sum(self.files[p].size for p in paths)


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """huggingface_hub's and the transport's errors as HubErrors that say what to do."""
    try:
        yield
    except HubError:
        raise
    except Exception as exc:  # classified below; anything else goes on up
        raise _hub_error(exc, what) from None


def _hub_error(exc: Exception, what: str) -> Exception:
    import httpx2
    from huggingface_hub import errors

    where = f"{what} on {endpoint()}"
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"{where}: the repo is gated and this request was not let in",
            hint="accept its terms on the hub, then set HF_TOKEN to a token of that account",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"{where}: no such repo (or it is private)",
            hint="check the org/repo spelling; for a private repo set HF_TOKEN",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{where}: no such revision", hint="give a branch, tag or commit after @")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return HubError(f"{where}: no such file", hint="`llmctl estimate hf://org/repo` lists them")
    if isinstance(exc, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError):
        return HubError(
            f"{where}: not in the cache, and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE to read it from the hub once",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return HubError(f"{where}: the hub answered HTTP {status}")
    if isinstance(exc, httpx2.TimeoutException):
        return HubError(
            f"{where}: no answer within {timeout():g} s",
            hint="try again, or raise HF_HUB_DOWNLOAD_TIMEOUT (seconds)",
        )
    if isinstance(exc, httpx2.HTTPError):
        return HubError(
            f"{where}: cannot reach the hub ({type(exc).__name__})",
            hint="check the network, or HF_ENDPOINT for a mirror",
        )
    return exc


class NotCached(HubError):
    """Asked not to use the network, and what is asked was not read before."""


def list_repo(
    repo: str, revision: str = "main", *, network: bool = True, prefer_cache: bool = False
) -> Listing:
    """The repo's files at `revision` (one API call; the cached listing when offline, when
    `revision` is a commit already listed, with `prefer_cache` when one was kept, and with
    `network=False` or NotCached)."""
    cached = listing_path(repo, revision)
    use_cache = prefer_cache or (_COMMIT_RE.match(revision) and cached.is_file())
    if offline() or not network or use_cache:
        try:
            data = json.loads(cached.read_text())
        except (OSError, ValueError):
            if not network:
                raise NotCached(f"hf://{repo}@{revision}: not listed before") from None
            if offline():
                raise HubError(
                    f"hf://{repo}@{revision}: not listed before, and HF_HUB_OFFLINE is set",
                    hint="unset HF_HUB_OFFLINE to list it once",
                ) from None
        else:
            files = {p: RepoFile(p, f["size"], f.get("sha256")) for p, f in data["files"].items()}
            return Listing(repo, revision, data["commit"], files)
    from huggingface_hub import HfApi

    with hub_errors(f"hf://{repo}@{revision}"):
        info = HfApi(endpoint=endpoint()).model_info(
            repo, revision=revision, files_metadata=True, timeout=timeout()
        )
    files = {}
    for s in info.siblings or []:
        sha = s.lfs.sha256 if s.lfs is not None else None
        files[s.rfilename] = RepoFile(s.rfilename, int(s.size or 0), sha)
    commit = info.sha or revision
    cached.parent.mkdir(parents=True, exist_ok=True)
    payload = {"commit": commit, "files": {p: vars(f) for p, f in files.items()}}
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(cached)
    return Listing(repo, revision, commit, files)


@dataclass
class ReadStats:
    """What the remote reads cost: bytes over the wire, requests, headers from the cache."""

    bytes_read: int = 0
    requests: int = 0
    cached: int = 0


class RangeFile(io.RawIOBase):
    """A read-only file over HTTP Range requests: each read is one request for the bytes asked.

    The GGUF reader asks for a prefix and then for twice as much, so reads stay few and bounded
    by what the header needs. A reply that is not 206 with the asked range is refused.
    """

    def __init__(self, url: str, size: int, name: str, stats: ReadStats) -> None:
        super().__init__()
        self.url, self.size, self.name_, self.stats = url, size, name, stats
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        from huggingface_hub import get_session, hf_raise_for_status
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        end = self.size if n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        headers = build_hf_headers()
        headers["Range"] = f"bytes={self.pos}-{end - 1}"
        headers["Accept-Encoding"] = "identity"
        self.stats.requests += 1
        with (
            hub_errors(self.name_),
            get_session().stream(
                "GET", self.url, headers=headers, timeout=timeout(), follow_redirects=True
            ) as r,
        ):
            hf_raise_for_status(r)
            if r.status_code != 206 or not r.headers.get("Content-Range", "").startswith(
                f"bytes {self.pos}-"
            ):
                raise HubError(
                    f"{self.name_}: the server does not answer range requests (HTTP "
                    f"{r.status_code} to a request for bytes {self.pos}-{end - 1})",
                    hint="llmctl reads only the header and will not download the whole file "
                    "for it; use another HF_ENDPOINT, or `llmctl pull` it and estimate the file",
                )
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > end - self.pos:
                    break
        if len(data) != end - self.pos:
            raise HubError(
                f"{self.name_}: the server sent {len(data)} bytes for a range of {end - self.pos}"
            )
        self.stats.bytes_read += len(data)
        self.pos = end
        return bytes(data)


def _head_cache(repo: str, commit: str, file: str) -> Path:
    return _cache_root() / "headers" / repo_folder(repo) / commit / (file + ".head")


def read_header(
    listing: Listing, file: str, stats: ReadStats, split: int = 0, *, network: bool = True
) -> GGUFFile:
    """The GGUF header of one file of the repo, from the cache or by range reads (NotCached
    with `network=False` when it was not read before)."""
    entry = listing.files.get(file)
    name = f"hf://{listing.repo}@{listing.commit[:12]}/{file}"
    if entry is None:
        raise HubError(f"{name}: no such file in the repo")
    cached = _head_cache(listing.repo, listing.commit, file)
    if cached.is_file():
        data = cached.read_bytes()
        stats.cached += 1
        return read_gguf_stream(io.BytesIO(data), entry.size, name, first=len(data), split=split)
    if not network:
        raise NotCached(f"{name}: header not read before")
    if offline():
        raise HubError(
            f"{name}: header not read before, and HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE to read it once",
        )
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(listing.repo, file, revision=listing.commit, endpoint=endpoint())
    tee = _Tee(RangeFile(url, entry.size, name, stats))
    gguf = read_gguf_stream(tee, entry.size, name, first=FIRST_READ, split=split)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.write_bytes(bytes(tee.seen))
    tmp.replace(cached)
    return gguf


class _Tee:
    """Keeps what was read, for the header cache."""

    def __init__(self, fh: RangeFile) -> None:
        self.fh, self.seen = fh, bytearray()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.seen += data
        return data


@dataclass
class RemoteModel:
    """One model of a repo: its files (split parts in order), its mmproj, and their headers."""

    ref: HubRef
    listing: Listing
    files: list[str]
    gguf: GGUFFile
    mmproj_file: str | None = None
    mmproj: GGUFFile | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.listing.size_of(self.files)

    @property
    def tag(self) -> str:
        from llmctl.hub.refs import split_info

        info = split_info(self.files[0])
        return info.tag if info else ""


def resolve_file(ref: HubRef, listing: Listing) -> str:
    """The first file of the model `ref` names in the listing (HubError, with the choices)."""
    names = sorted(listing.files)
    chosen = ref.file if ref.file else find_model(names, ref.tag)
    if chosen is None or chosen not in listing.files:
        quants = ", ".join(listing.gguf_models()) or "none"
        what = ref.file or (f"quant {ref.tag}" if ref.tag else "a GGUF model")
        raise HubError(
            f"{ref}: the repo has no {what}",
            hint=f"its GGUF models: {quants}",
        )
    return chosen


def read_model(
    ref: HubRef,
    stats: ReadStats | None = None,
    listing: Listing | None = None,
    *,
    file: str | None = None,
    with_mmproj: bool = True,
    network: bool = True,
) -> RemoteModel:
    """The headers of the model `ref` names (every split part; the mmproj sibling too);
    `network=False`: from what was read before only (NotCached)."""
    stats = stats if stats is not None else ReadStats()
    listing = listing or list_repo(ref.repo, ref.revision, network=network)
    first = file or resolve_file(ref, listing)
    names = sorted(listing.files)
    parts = parts_of(names, first)
    head = read_header(listing, parts[0], stats, network=network)
    count = head.metadata.get("split.count")
    if isinstance(count, int) and count != len(parts):
        raise HubError(
            f"{ref.with_file(first)}: split.count is {count} but the repo holds {len(parts)} parts"
        )
    for i, part in enumerate(parts[1:], start=1):
        head.tensors.extend(read_header(listing, part, stats, split=i, network=network).tensors)
    head.file_size = listing.size_of(parts)
    head.paths = [Path(p) for p in parts]
    model = RemoteModel(ref.with_file(first), listing, parts, head)
    if with_mmproj:
        mm = find_mmproj(names, first)
        if mm is not None:
            model.mmproj_file = mm
            model.mmproj = read_header(listing, mm, stats, network=network)
    return model


def source_json(model: RemoteModel) -> dict[str, Any]:
    return {
        "ref": str(model.ref),
        "commit": model.listing.commit,
        "files": model.files,
        "file_bytes": model.size,
        "mmproj": model.mmproj_file,
    }
