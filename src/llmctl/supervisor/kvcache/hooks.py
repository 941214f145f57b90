"""The supervisor's keep_kv hooks: before a launch, before a stop, after a server is ready.

`prepare_launch` adds `--slot-save-path <state>/kv/<folder>/` and returns what the launch record
keeps (folder, launch key, limits). `save_slots` runs before llmctl stops that server: it saves
every slot that holds tokens, within `KeepKv.timeout_s` and the caps (`decide.plan_saves`), to a
temporary name, checks the size, records the SHA-256 and gives the file its name. `restore_slots`
runs after the next load, before the first request is let through: a file is restored only when
`decide.check_entry` and `decide.check_content` let it.

Neither hook raises: every failure (the server dies mid-save, a full disk, a truncated or altered
file, one of another launch) leaves the load or the unload going on without that file; the bad
file and its index entry are removed and a message through `emit` names the profile and the file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmctl.supervisor.kvcache import files
from llmctl.supervisor.kvcache.decide import check_content, check_entry, mib, plan_saves
from llmctl.supervisor.kvcache.files import INDEX, Index, Saved
from llmctl.supervisor.kvcache.key import launch_key
from llmctl.supervisor.kvcache.server import SlotError, restore_slot, save_slot, slot_tokens
from llmctl.supervisor.launch import KeepKv

if TYPE_CHECKING:
    from llmctl.supervisor.launch import LaunchSpec

Emit = Callable[[str], None]  # one message for the user, as a "kv" event


def prepare_launch(state_dir: Path, spec: LaunchSpec) -> tuple[LaunchSpec, dict[str, Any] | None]:
    """Hook before a launch: the spec with `--slot-save-path`, and what the launch record keeps.

    Unchanged spec and None when the profile has no keep_kv.
    """
    if spec.keep_kv is None:
        return spec, None
    folder = files.claim(state_dir, spec.profile)
    record = {
        "dir": str(folder),
        "key": launch_key(spec.argv, spec.env),
        "limits": spec.keep_kv.to_json(),
    }
    return with_slot_save_path(spec, folder), record


def with_slot_save_path(spec: LaunchSpec, folder: Path) -> LaunchSpec:
    """The spec with `--slot-save-path FOLDER`, as a keep_kv launch runs it."""
    return replace(spec, argv=(*spec.argv, *files.slot_save_args(folder)))


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
    index = files.read_index(folder)
    if index is None or index.key != key or index.profile != profile:
        # files of another launch, or of none: start afresh (tidy removes them)
        index = Index(profile=profile, key=key)
        with contextlib.suppress(OSError):
            files.write_index(folder, index)
    if not any(s.tokens > 0 for s in slots):
        files.tidy(folder, index)
        return
    root = folder.parent
    others = files.others(folder)
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
            files.write_index(folder, index)
        except OSError as err:
            emit(
                f"profile {profile!r}: slot {slot} dropped: cannot write {folder / INDEX}: {err}",
            )
            del index.slots[slot]
            files.unlink(folder / entry.file)
            continue
        done.append(entry)
    files.tidy(folder, index)
    if done:
        n_tok = sum(e.tokens for e in done)
        n_bytes = sum(e.bytes for e in done)
        emit(
            f"profile {profile!r}: saved the KV cache of {len(done)} slot(s), {n_tok} tokens, "
            f"{mib(n_bytes)} in {time.monotonic() - t0:.2f} s",
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
    """Save one slot to a temporary name, check it, record its SHA-256, give it its final name."""
    final = f"slot{slot}.bin"
    partial = f"slot{slot}.saving"
    started = time.monotonic()
    if timeout <= 0:
        emit(
            f"profile {profile!r}: slot {slot} not saved: out of time ({limits.timeout_s:g} s)",
        )
        return None
    try:
        written, n_tokens = save_slot(url, slot, partial, timeout)
    except SlotError as err:
        files.unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {err}")
        return None
    size = files.size_of(folder / partial)
    other = index.bytes - (index.slots[slot].bytes if slot in index.slots else 0)
    problem = None
    if size != written:
        problem = f"the file holds {size} bytes, llama-server wrote {written}"
    elif written + other > limits.max_bytes:
        problem = f"{mib(written)} exceed the profile's keep_kv cap {mib(limits.max_bytes)}"
    if problem is not None:
        files.unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {problem}")
        return None
    digest = files.file_sha256(folder / partial)
    try:
        os.replace(folder / partial, folder / final)
    except OSError as err:
        files.unlink(folder / partial)
        emit(f"profile {profile!r}: slot {slot} not saved: {err}")
        return None
    took = round(time.monotonic() - started, 3)
    return Saved(slot, final, n_tokens, written, time.time(), took, digest)


def _evict(folder: Path, slot: int, emit: Emit) -> None:
    index = files.read_index(folder)
    if index is None or slot not in index.slots:
        return
    entry = index.slots.pop(slot)
    try:
        files.write_index(folder, index)
    finally:
        files.unlink(folder / entry.file)
    emit(
        f"profile {index.profile!r}: dropped the saved KV cache of slot {slot} ({mib(entry.bytes)}) "
        "to stay under server.keep_kv_total",
    )


def restore_slots(record: Mapping[str, Any] | None, url: str, emit: Emit, profile: str) -> bool:
    """Hook after a server is ready, before the first request: restore the saved slots that match.

    Never raises. A file that does not match the launch, is truncated, altered, too old, or that
    llama-server refuses is removed with its index entry, and `emit` says why, naming the file.
    False when the server went away during a restore.
    """
    gone = False
    if not record:
        return True
    t0 = time.monotonic()
    limits = _limits(record)
    folder = Path(record["dir"])
    index = files.read_index(folder)
    if index is None:
        files.tidy(folder, None)
        return True
    deadline = t0 + limits.timeout_s
    key_ok = index.key == record["key"]
    now = time.time()
    restored: list[Saved] = []
    for slot, entry in sorted(index.slots.items()):
        path = folder / entry.file
        why = check_entry(
            entry,
            key_ok=key_ok,
            size_on_disk=files.size_of(path),
            now=now,
            max_age_s=limits.max_age_s,
        )
        if why is None and entry.sha256 is not None:
            why = check_content(entry, files.file_sha256(path))
        if why is None:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise SlotError(f"out of time ({limits.timeout_s:g} s)")
                n = restore_slot(url, slot, entry.file, left)
                if n != entry.tokens:
                    why = f"llama-server restored {n} tokens, not {entry.tokens}"
            except SlotError as err:
                why = f"llama-server could not restore it: {err}"
                gone = gone or err.gone
        if why is None:
            restored.append(entry)
            continue
        del index.slots[slot]
        files.unlink(path)
        emit(
            f"profile {profile!r}: saved KV cache of slot {slot} removed, not restored: {why} "
            f"({path})"
        )
    index.key = str(record["key"])
    try:
        files.write_index(folder, index)
    except OSError as err:
        emit(f"profile {profile!r}: cannot update {folder / INDEX}: {err}")
    files.tidy(folder, index)
    if restored:
        emit(
            f"profile {profile!r}: restored the KV cache of {len(restored)} slot(s), "
            f"{sum(e.tokens for e in restored)} tokens, {mib(sum(e.bytes for e in restored))} "
            f"in {time.monotonic() - t0:.2f} s",
        )
    return not gone
