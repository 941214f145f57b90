"""The kv state folder: one folder per profile (`<state>/kv/<folder_name>/`), its files and index.

A profile's folder holds `slot<N>.bin` (llama-server's own format) and `index.json`: which profile
the folder belongs to, the launch key that wrote it, and for each file its tokens, bytes, SHA-256
and when it was saved. A file the index does not name is an orphan (a save cut short) and goes at
the next `tidy`. The index is written atomically; every reader treats an unreadable index as none.

A folder is found by its name (`key.folder_name`) or, failing that, by the profile its index
names (`claim`): folders written under an earlier naming are moved into place, not lost.
Cheap to import: `llmctl status` lists saved caches through `saved()`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmctl.supervisor.kvcache.key import folder_name

KV_DIR = "kv"
INDEX = "index.json"
FORMAT = 1


@dataclass
class Saved:
    """One saved slot, as index.json records it."""

    slot: int
    file: str
    tokens: int
    bytes: int
    saved_at: float
    save_s: float = 0.0
    # SHA-256 of the file as written: a restore checks it (flipped bytes are not restored);
    # None for entries saved before checksums were kept
    sha256: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Saved:
        digest = data.get("sha256")
        return cls(
            slot=int(data["slot"]),
            file=str(data["file"]),
            tokens=int(data["tokens"]),
            bytes=int(data["bytes"]),
            saved_at=float(data["saved_at"]),
            save_s=float(data.get("save_s", 0.0)),
            sha256=digest if isinstance(digest, str) else None,
        )


@dataclass
class Index:
    profile: str
    key: str
    slots: dict[int, Saved] = field(default_factory=dict)
    bytes_per_token: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "profile": self.profile,
            "key": self.key,
            "bytes_per_token": self.bytes_per_token,
            "slots": [asdict(s) for _, s in sorted(self.slots.items())],
        }

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.slots.values())


def kv_root(state_dir: Path) -> Path:
    return state_dir / KV_DIR


def profile_folder(state_dir: Path, profile: str) -> Path:
    """Where `profile`'s saved slots live (the folder may not exist yet)."""
    return kv_root(state_dir) / folder_name(profile)


def slot_save_args(folder: Path) -> tuple[str, ...]:
    """The arguments that give llama-server `folder` for its slot files."""
    return ("--slot-save-path", str(folder))


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file (hex), None when it cannot be read.

    SHA-256 rather than a faster non-cryptographic hash: hashlib has it without a dependency, it
    runs at about 1.5 GiB/s here (a second per GiB saved, beside llama-server's own write and
    read of the same bytes), and a file someone could edit is not matched by a crafted one.
    """
    import hashlib

    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def read_index(folder: Path) -> Index | None:
    """The folder's index; None when it is missing or unreadable (its files are then orphans)."""
    import json

    try:
        data = json.loads((folder / INDEX).read_bytes())
        slots = {int(s["slot"]): Saved.from_json(s) for s in data["slots"]}
        bpt = data.get("bytes_per_token")
        return Index(
            profile=str(data["profile"]),
            key=str(data["key"]),
            slots=slots,
            bytes_per_token=None if bpt is None else float(bpt),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_index(folder: Path, index: Index) -> None:
    """Atomically; raises OSError (disk full) with the old index left in place."""
    import json
    import tempfile

    blob = json.dumps(index.to_json(), indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, folder / INDEX)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def tidy(folder: Path, index: Index | None) -> None:
    """Remove files the index does not name (a save cut short, a file whose entry was dropped)."""
    keep = {INDEX} | ({s.file for s in index.slots.values()} if index else set())
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            if p.name not in keep and (p.is_file() or p.is_symlink()):
                unlink(p)


def _indexed(root: Path) -> list[tuple[Path, Index]]:
    """Every profile folder under the kv folder `root` with a readable index, by folder name."""
    out: list[tuple[Path, Index]] = []
    with contextlib.suppress(OSError):
        for folder in sorted(root.iterdir()):
            index = read_index(folder) if folder.is_dir() else None
            if index is not None:
                out.append((folder, index))
    return out


def others(folder: Path) -> list[tuple[str, Saved]]:
    """(folder name, entry) of every saved slot in the folders beside `folder`: what the cap of the
    whole kv folder counts besides `folder`'s own files."""
    return [
        (f.name, s)
        for f, index in _indexed(folder.parent)
        if f != folder
        for s in index.slots.values()
    ]


def claim(state_dir: Path, profile: str) -> Path:
    """`profile`'s folder, created, after sorting out folders of an earlier naming (which gave `a/b`
    the folder of a profile named `a_b-<hash>`): the index says whose files a folder holds. A
    folder of another name whose index names `profile` is moved into place when the profile's own
    folder holds no index, and removed when it does; the profile's own folder, when its index
    names another profile, is moved to that profile's folder (or removed if that one is taken)."""
    import shutil

    folder = profile_folder(state_dir, profile)
    own = read_index(folder)
    if own is not None and own.profile != profile:
        theirs = profile_folder(state_dir, own.profile)
        if read_index(theirs) is None:
            shutil.rmtree(theirs, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rename(folder, theirs)
        shutil.rmtree(folder, ignore_errors=True)
        own = None
    strays = [
        f for f, index in _indexed(kv_root(state_dir)) if index.profile == profile and f != folder
    ]
    if strays and own is None:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rename(strays.pop(0), folder)
    for stray in strays:
        shutil.rmtree(stray, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def saved(state_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every saved slot under the state folder: profile, slot, tokens, bytes, age_s (for status)."""
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for _, index in _indexed(kv_root(state_dir)):
        for s in sorted(index.slots.values(), key=lambda s: s.slot):
            out.append(
                {
                    "profile": index.profile,
                    "slot": s.slot,
                    "tokens": s.tokens,
                    "bytes": s.bytes,
                    "age_s": round(max(0.0, now - s.saved_at), 1),
                }
            )
    return out


def forget(state_dir: Path, profile: str | None = None) -> tuple[int, int]:
    """Drop the saved slots of `profile` (None: of every profile), in its own folder and in any
    folder whose index names it. Returns (files, bytes) dropped."""
    import shutil

    root = kv_root(state_dir)
    if profile is None:
        folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    else:
        # every folder whose index names it, and its own folder unless that holds another's index
        folders = [f for f, i in _indexed(kv_root(state_dir)) if i.profile == profile]
        own = profile_folder(state_dir, profile)
        if own not in folders and read_index(own) is None:
            folders.append(own)
    files = size = 0
    for folder in folders:
        index = read_index(folder)
        if index is not None:
            files += len(index.slots)
            size += index.bytes
        shutil.rmtree(folder, ignore_errors=True)
    return files, size
