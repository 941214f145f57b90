"""The keep_kv decisions, pure: which slots to save, which files to evict, which may be restored.

No processes, no files, no clock, no logging: every input is an argument (the slots and their
tokens, the files the index records, the free disk space, the time), every answer a value.
1. A save goes slot by slot, most tokens first; a slot is skipped when its size guess exceeds the
   profile's cap left, the free disk, or the folder cap left once other profiles' files are
   evicted, oldest first (never for a save that cannot fit anyway).
2. A file is restored only when its launch key matches, its size is as written, it is
   younger than `keep_kv_max_age`, and its SHA-256 is as recorded at its save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmctl.supervisor.kvcache.files import Saved
    from llmctl.supervisor.launch import KeepKv


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
                f"{st.tokens} tokens (~{mib(guess)}) exceed the profile's keep_kv cap "
                f"{mib(limits.max_bytes)}"
            )
        elif disk is not None and guess > disk + freed:
            reason = f"~{mib(guess)} needed, {mib(disk)} free on the disk"
        else:
            room = limits.total_bytes - own_rest - total_others
            while guess > room and len(evict) < len(others_left):
                victim = others_left[len(evict)]
                evict.append(victim)
                room += victim[1].bytes
            if guess > room:
                reason = f"~{mib(guess)} exceed server.keep_kv_total {mib(limits.total_bytes)}"
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
    """Why a saved slot must not be restored (None: it may be, once `check_content` agrees)."""
    if not key_ok:
        return "it was saved by another model file, llama-server build or cache setting"
    if size_on_disk is None:
        return "its file is missing"
    if size_on_disk != entry.bytes:
        return f"its file is truncated or altered ({size_on_disk} bytes, {entry.bytes} written)"
    if max_age_s > 0 and now - entry.saved_at > max_age_s:
        return f"it is older than server.keep_kv_max_age ({_age(now - entry.saved_at)})"
    return None


def check_content(entry: Saved, sha256_on_disk: str | None) -> str | None:
    """Why a file whose size and key are right must not be restored: its bytes changed since its
    save. An entry saved before checksums were kept (no `sha256`) passes."""
    if entry.sha256 is None or sha256_on_disk == entry.sha256:
        return None
    if sha256_on_disk is None:
        return "its file cannot be read"
    return "its content changed since it was saved (SHA-256 mismatch)"


def mib(n: float) -> str:
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
