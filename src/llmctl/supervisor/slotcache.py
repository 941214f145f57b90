"""Saved KV caches: llama-server's slots written to disk before an unload, read back after a reload.

A profile with `keep_kv` is launched with `--slot-save-path <state>/kv/<profile>/`. Before llmctl
stops that server it asks llama-server to save every slot that holds tokens
(`POST /slots/N?action=save`); after the next load of the same profile, before the first request is
let through, it restores them (`?action=restore`), so a long conversation does not have to be
processed again.

One folder per profile holds `slot<N>.bin` (llama-server's own format) and `index.json`:
what each file holds (tokens, bytes, when it was saved) and the key of the launch that wrote it.
A file is only restored into a launch with the same key: the same model file (path, size, mtime),
the same llama-server build (the binary and its libraries beside it), and the same command line
apart from the flags that cannot change what the cache holds (`HARMLESS_FIELDS`). llama-server itself
only checks the layer count and cache types, and would restore the cache of another model with
the same shapes without a word.

Every failure (the server dies mid-save, the disk is full, a file is truncated or belongs to another
launch) leaves the load or the unload going on without that file; the bad file is removed and an
event says so. A save is bounded by `KeepKv.timeout_s` and by the size caps.

The decisions (`plan_saves`, `check_entry`) are pure; the rest is file and HTTP effects.
Cheap to import: `llmctl status` lists saved caches through `saved()`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec

KV_DIR = "kv"
INDEX = "index.json"
FORMAT = 1

Emit = Callable[[str], None]  # one message for the user, as a "kv" event

# Profile fields whose flags cannot change what a slot's cache holds: a launch that differs from the
# saving one only in these (and in host, port, aliases, load mode) may restore its files. Anything
# else, extra_args included, is part of the key, so a rope or context change drops the files
# instead of restoring garbage.
HARMLESS_FIELDS = frozenset(
    {"threads", "threads_batch", "n_gpu_layers", "temp", "top_k", "top_p", "min_p",
     "repeat_penalty", "seed", "metrics"}
)  # fmt: skip


def _harmless() -> tuple[frozenset[str], frozenset[str]]:
    """(flags that take a value, switches) left out of the launch key, from llmctl's flag table."""
    from llmctl.llama.flags import FLAGS

    valued = {"--host", "--port", "-a", "--alias", "-lm", "--load-mode", "--slot-save-path"}
    switches = {"--mlock", "--mmap", "--no-mmap"}
    for f in FLAGS:
        if f.field in HARMLESS_FIELDS:
            (switches if f.kind == "switch" else valued).update(f.spellings)
    return frozenset(valued), frozenset(switches)


@dataclass(frozen=True)
class KeepKv:
    """A profile's `keep_kv` limits: bytes for this profile, bytes for the whole kv folder,
    the age after which a file is dropped, and how long one save (or restore) may take."""

    max_bytes: int
    total_bytes: int
    max_age_s: float
    timeout_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


# --------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class SlotTokens:
    """A slot of the running server and the tokens its cache holds (GET /slots)."""

    slot: int
    tokens: int
    busy: bool = False


@dataclass
class SavePlan:
    save: list[int] = field(default_factory=list)
    skip: list[tuple[int, str]] = field(default_factory=list)
    # (profile folder, slot) of other profiles' files to drop, oldest first, to stay under the folder cap
    evict: list[tuple[str, int]] = field(default_factory=list)


def plan_saves(
    slots: Sequence[SlotTokens],
    *,
    limits: KeepKv,
    bytes_per_token: float | None,
    own: Mapping[int, Saved],
    others: Sequence[tuple[str, Saved]],
    free_disk: int | None,
) -> SavePlan:
    """Which slots to save, which to skip (and why), which older files of other profiles to drop.

    Slots with the most tokens go first. A slot's size is guessed from `bytes_per_token` (None: not
    guessed; the size is checked after the save). `own` are this profile's files (replaced by the
    new ones); `others` every other profile's files (dropped oldest first when the folder cap needs
    room). A slot is skipped when its guess exceeds the profile cap left, the folder cap left after
    evictions, or the free disk space.
    """
    plan = SavePlan()
    kept = dict(own)  # this profile's files that stay: those of slots not saved again
    planned = 0  # guessed bytes of the slots planned so far
    others_left = sorted(others, key=lambda item: item[1].saved_at)
    total_others = sum(s.bytes for _, s in others_left)
    disk = free_disk
    for st in sorted(slots, key=lambda s: (-s.tokens, s.slot)):
        if st.tokens <= 0:
            continue
        guess = 0 if bytes_per_token is None else int(st.tokens * bytes_per_token)
        old = kept.get(st.slot)
        freed = old.bytes if old is not None else 0
        own_rest = sum(s.bytes for s in kept.values()) - freed + planned
        evict: list[tuple[str, Saved]] = []
        reason = None
        if guess > limits.max_bytes - own_rest:
            reason = (
                f"{st.tokens} tokens (~{_mib(guess)}) exceed the profile's keep_kv cap "
                f"{_mib(limits.max_bytes)}"
            )
        elif disk is not None and guess > disk + freed:
            reason = f"~{_mib(guess)} needed, {_mib(disk)} free on the disk"
        else:
            room = limits.total_bytes - own_rest - total_others
            while guess > room and len(evict) < len(others_left):
                victim = others_left[len(evict)]
                evict.append(victim)
                room += victim[1].bytes
            if guess > room:
                reason = f"~{_mib(guess)} exceed server.keep_kv_total {_mib(limits.total_bytes)}"
        if reason is not None:
            plan.skip.append((st.slot, reason))
            continue
        for victim in evict:
            others_left.remove(victim)
            total_others -= victim[1].bytes
            plan.evict.append((victim[0], victim[1].slot))
        kept.pop(st.slot, None)
        planned += guess
        plan.save.append(st.slot)
        if disk is not None:
            disk -= max(0, guess - freed)
    return plan


def check_entry(
    entry: Saved, *, key_ok: bool, size_on_disk: int | None, now: float, max_age_s: float
) -> str | None:
    """Why a saved slot must not be restored (None: it may be)."""
    if not key_ok:
        return "it was saved by another model file, llama-server build or cache setting"
    if size_on_disk is None:
        return "its file is missing"
    if size_on_disk != entry.bytes:
        return f"its file is truncated or altered ({size_on_disk} bytes, {entry.bytes} written)"
    if max_age_s > 0 and now - entry.saved_at > max_age_s:
        return f"it is older than server.keep_kv_max_age ({_age(now - entry.saved_at)})"
    return None


def _mib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _age(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


# --------------------------------------------------------------------------- the launch key


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


# --------------------------------------------------------------------------- files


def kv_root(state_dir: Path) -> Path:
    return state_dir / KV_DIR


def profile_folder(state_dir: Path, profile: str) -> Path:
    """A folder name for any profile name, one per name: the name itself when it is safe, else a
    cleaned one, `~` and a hash of the name (`~` is never in a safe name, so the two kinds never
    meet; before, `a/b` and a profile named `a_b-<hash>` shared a folder)."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", profile)[:60]
    if safe != profile or safe.startswith(".") or len(profile) > 60:
        import hashlib

        safe = f"{safe.lstrip('.')}~{hashlib.sha256(profile.encode()).hexdigest()[:16]}"
    return kv_root(state_dir) / safe


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file (hex), None when it cannot be read."""
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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _tidy(folder: Path, index: Index | None) -> None:
    """Remove files the index does not name (a save cut short, a file whose entry was dropped)."""
    keep = {INDEX} | ({s.file for s in index.slots.values()} if index else set())
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            if p.name not in keep and (p.is_file() or p.is_symlink()):
                _unlink(p)


def saved(state_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Every saved slot under the state folder: profile, slot, tokens, bytes, age_s (for status)."""
    root = kv_root(state_dir)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for folder in sorted(root.iterdir()):
        index = read_index(folder) if folder.is_dir() else None
        if index is None:
            continue
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
    """Drop the saved slots of `profile` (None: of every profile). Returns (files, bytes) dropped."""
    import shutil

    root = kv_root(state_dir)
    folders = [profile_folder(state_dir, profile)] if profile else []
    if profile is None and root.is_dir():
        folders = [p for p in root.iterdir() if p.is_dir()]
    files = size = 0
    for folder in folders:
        index = read_index(folder)
        if index is not None:
            files += len(index.slots)
            size += index.bytes
        shutil.rmtree(folder, ignore_errors=True)
    return files, size


# --------------------------------------------------------------------------- HTTP


class SlotError(Exception):
    """A /slots call failed: the server answered an error, died (`gone`), or did not answer in time."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


def _call(url: str, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
    import http.client
    import json

    from llmctl.supervisor.health import _host_port

    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=max(0.05, timeout))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except TimeoutError:
        raise SlotError(f"no answer within {timeout:.1f} s") from None
    except (OSError, http.client.HTTPException) as err:
        raise SlotError(f"the server went away ({type(err).__name__}: {err})", gone=True) from None
    finally:
        conn.close()
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    if resp.status != 200:
        message = raw[:200].decode(errors="replace")
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            message = str(payload["error"].get("message", message))
        raise SlotError(f"HTTP {resp.status}: {message}")
    return payload


def slot_tokens(url: str, timeout: float) -> list[SlotTokens]:
    """GET /slots: each slot and the tokens its cache holds (n_prompt_tokens, absent when unused)."""
    data = _call(url, "GET", "/slots", None, timeout)
    if not isinstance(data, list):
        raise SlotError("GET /slots did not answer a list")
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("id"), int):
            out.append(
                SlotTokens(
                    item["id"],
                    int(item.get("n_prompt_tokens") or 0),
                    bool(item.get("is_processing")),
                )
            )
    return out


# --------------------------------------------------------------------------- hooks


def prepare_launch(state_dir: Path, spec: LaunchSpec) -> tuple[LaunchSpec, dict[str, Any] | None]:
    """Hook before a launch: the spec with `--slot-save-path`, and what the launch record keeps.

    Unchanged spec and None when the profile has no keep_kv.
    """
    if spec.keep_kv is None:
        return spec, None
    folder = profile_folder(state_dir, spec.profile)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "dir": str(folder),
        "key": launch_key(spec.argv, spec.env),
        "limits": spec.keep_kv.to_json(),
    }
    return replace(spec, argv=(*spec.argv, "--slot-save-path", str(folder))), record


def _limits(record: Mapping[str, Any]) -> KeepKv:
    return KeepKv(**{k: record["limits"][k] for k in KeepKv.__dataclass_fields__})


def _bytes_per_token(argv: Sequence[str]) -> float | None:
    """The KV bytes one token takes, from the model's metadata (None when it cannot be read)."""
    try:
        from llmctl.llama.gguf import read_gguf
        from llmctl.memory.cmdline import parse_llama_args
        from llmctl.memory.estimate import ModelSource
        from llmctl.memory.hparams import hparams_from_metadata
        from llmctl.memory.kv import context_sizes, kv_caches

        parsed = parse_llama_args(argv)
        if not parsed.model:
            return None
        meta = ModelSource.from_gguf(read_gguf(Path(parsed.model))).metadata
        hp = hparams_from_metadata(meta)
        cs = context_sizes(parsed.options, hp.n_ctx_train)
        per_token = 0.0
        for c in kv_caches(hp, parsed.options, cs):
            if c.kind != "recurrent" and c.cells:
                per_token += c.bytes / (c.cells * c.n_stream)
        return per_token + 4  # + the token id itself
    except Exception:
        return None


def save_slots(
    record: Mapping[str, Any] | None, url: str, argv: Sequence[str], emit: Emit, profile: str
) -> None:
    """Hook before stopping a server: save its slots that hold tokens, within the caps and time bound.

    Never raises: whatever goes wrong is said through `emit` and the unload goes on.
    """
    if not record:
        return
    t0 = time.monotonic()
    limits = _limits(record)
    deadline = t0 + limits.timeout_s
    folder = Path(record["dir"])
    key = str(record["key"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        slots = slot_tokens(url, deadline - time.monotonic())
    except (SlotError, OSError) as err:
        emit(f"profile {profile!r}: KV cache not saved: GET /slots failed: {err}")
        return
    index = read_index(folder)
    if index is None or index.key != key:
        # files of another launch, or of none: start afresh (_tidy removes them)
        index = Index(profile=profile, key=key)
        with contextlib.suppress(OSError):
            write_index(folder, index)
    if not any(s.tokens > 0 for s in slots):
        _tidy(folder, index)
        return
    others: list[tuple[str, Saved]] = []
    root = folder.parent
    with contextlib.suppress(OSError):
        for other in root.iterdir():
            oi = read_index(other) if other.is_dir() and other != folder else None
            if oi is not None:
                others += [(other.name, s) for s in oi.slots.values()]
    try:
        import shutil

        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        free = None
    bpt = index.bytes_per_token or _bytes_per_token(argv)
    plan = plan_saves(
        slots, limits=limits, bytes_per_token=bpt, own=index.slots, others=others, free_disk=free
    )
    for name, slot in plan.evict:
        _evict(root / name, slot, emit)
    for slot, why in plan.skip:
        emit(f"profile {profile!r}: slot {slot} not saved: {why}")
    done: list[Saved] = []
    for slot in plan.save:
        left = deadline - time.monotonic()
        entry = _save_one(url, folder, slot, left, limits, index, emit, profile)
        if entry is None:
            if time.monotonic() >= deadline:
                break
            continue
        index.slots[slot] = entry
        if entry.tokens:
            index.bytes_per_token = entry.bytes / entry.tokens
        try:
            write_index(folder, index)
        except OSError as err:
            emit(
                f"profile {profile!r}: slot {slot} dropped: cannot write {folder / INDEX}: {err}",
            )
            del index.slots[slot]
            _unlink(folder / entry.file)
            continue
        done.append(entry)
    _tidy(folder, index)
    if done:
        n_tok = sum(e.tokens for e in done)
        n_bytes = sum(e.bytes for e in done)
        emit(
            f"profile {profile!r}: saved the KV cache of {len(done)} slot(s), {n_tok} tokens, "
            f"{_mib(n_bytes)} in {time.monotonic() - t0:.2f} s",
        )


def _save_one(
    url: str,
    folder: Path,
    slot: int,
    timeout: float,
    limits: KeepKv,
    index: Index,
    emit: Emit,
    profile: str,
) -> Saved | None:
    """Save one slot to a temporary name, check it, and give it its final name."""
    final = f"slot{slot}.bin"
    partial = f"slot{slot}.saving"
    started = time.monotonic()
    if timeout <= 0:
        emit(
            f"profile {profile!r}: slot {slot} not saved: out of time ({limits.timeout_s:g} s)",
        )
        return None
    try:
        answer = _call(url, "POST", f"/slots/{slot}?action=save", {"filename": partial}, timeout)
        written = int(answer["n_written"])
        n_tokens = int(answer["n_saved"])
    except (SlotError, KeyError, TypeError, ValueError) as err:
        _unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {err}")
        return None
    size = _size(folder / partial)
    other = index.bytes - (index.slots[slot].bytes if slot in index.slots else 0)
    problem = None
    if size != written:
        problem = f"the file holds {size} bytes, llama-server wrote {written}"
    elif written + other > limits.max_bytes:
        problem = f"{_mib(written)} exceed the profile's keep_kv cap {_mib(limits.max_bytes)}"
    if problem is not None:
        _unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {problem}")
        return None
    digest = file_sha256(folder / partial)
    try:
        os.replace(folder / partial, folder / final)
    except OSError as err:
        _unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {err}")
        return None
    took = round(time.monotonic() - started, 3)
    return Saved(slot, final, n_tokens, written, time.time(), took, digest)


def _evict(folder: Path, slot: int, emit: Emit) -> None:
    index = read_index(folder)
    if index is None or slot not in index.slots:
        return
    entry = index.slots.pop(slot)
    try:
        write_index(folder, index)
    finally:
        _unlink(folder / entry.file)
    emit(
        f"profile {index.profile!r}: dropped the saved KV cache of slot {slot} ({_mib(entry.bytes)}) "
        "to stay under server.keep_kv_total",
    )


def restore_slots(record: Mapping[str, Any] | None, url: str, emit: Emit, profile: str) -> bool:
    """Hook after a server is ready, before the first request: restore the saved slots that match.

    Never raises. A file that does not match the launch, is truncated, too old, or that llama-server
    refuses is removed, and `emit` says why. False when the server went away during a restore.
    """
    gone = False
    if not record:
        return True
    t0 = time.monotonic()
    limits = _limits(record)
    folder = Path(record["dir"])
    index = read_index(folder)
    if index is None:
        _tidy(folder, None)
        return True
    deadline = t0 + limits.timeout_s
    key_ok = index.key == record["key"]
    now = time.time()
    restored: list[Saved] = []
    for slot, entry in sorted(index.slots.items()):
        why = check_entry(
            entry,
            key_ok=key_ok,
            size_on_disk=_size(folder / entry.file),
            now=now,
            max_age_s=limits.max_age_s,
        )
        changed = entry.sha256 is not None and file_sha256(folder / entry.file) != entry.sha256
        if why is None and changed:
            why = "its content changed since it was saved (SHA-256 mismatch)"
        if why is None:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise SlotError(f"out of time ({limits.timeout_s:g} s)")
                answer = _call(
                    url, "POST", f"/slots/{slot}?action=restore", {"filename": entry.file}, left
                )
                if int(answer.get("n_restored", -1)) != entry.tokens:
                    why = f"llama-server restored {answer.get('n_restored')} tokens, not {entry.tokens}"
            except (SlotError, AttributeError, TypeError, ValueError) as err:
                why = f"llama-server could not restore it: {err}"
                gone = gone or (isinstance(err, SlotError) and err.gone)
        if why is None:
            restored.append(entry)
            continue
        del index.slots[slot]
        _unlink(folder / entry.file)
        emit(f"profile {profile!r}: saved KV cache of slot {slot} removed, not restored: {why}")
    index.key = str(record["key"])
    try:
        write_index(folder, index)
    except OSError as err:
        emit(f"profile {profile!r}: cannot update {folder / INDEX}: {err}")
    _tidy(folder, index)
    if restored:
        emit(
            f"profile {profile!r}: restored the KV cache of {len(restored)} slot(s), "
            f"{sum(e.tokens for e in restored)} tokens, {_mib(sum(e.bytes for e in restored))} "
            f"in {time.monotonic() - t0:.2f} s",
        )
    return not gone
