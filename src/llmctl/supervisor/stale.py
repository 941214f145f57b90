"""Stale servers: one that runs a launch its manifest no longer asks for (edited flags, model,
environment, binary, or the profile gone).

A launch record keeps its origin (`LaunchSpec.origin`, written by `launch_spec` with
`launch.origin_of`): the manifest's
path and stat, and the profile's identity, a hash of what the manifest makes of the profile
(its arguments, environment, keep_kv and the `server.binary` setting as written, so that a
PATH or an environment variable that finds another binary is not an edit). Placement's device
flags are not in it: a placed launch is stale only when the profile changed.

`staleness` decides from the two identities (a pure function); `check` gathers them: an
unchanged manifest file (same size and mtime) is never stale, which costs one stat; otherwise the
manifest is read (from its cache; `cheap=True`, as `llmctl status` asks, only from the cache, so
neither YAML nor pydantic are imported) and the profile's identity computed again.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from llmctl.manifest.model import Manifest

    IdentityOf = Callable[[Manifest, str], str | None]


class Launch(Protocol):
    """What the identity reads of a LaunchSpec (this module stays below supervisor/launch.py)."""

    @property
    def argv(self) -> tuple[str, ...]: ...

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def keep_kv(self) -> Any: ...


class Staleness(NamedTuple):
    """`stale`: True (old launch), False (current) or None (cannot tell); `why` says which."""

    stale: bool | None
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"stale": self.stale, "stale_why": self.why}


CURRENT = Staleness(False)
UNKNOWN = Staleness(None)


def manifest_stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]  # (size, mtime): an edit changes one of them


def identity(spec: Launch, binary_setting: str | None) -> str:
    """The profile's launch as the manifest makes it: arguments (not the binary's resolved path),
    environment, keep_kv, and `server.binary` as written."""
    import hashlib
    import json

    config = {
        "args": list(spec.argv[1:]),
        "env": spec.env,
        "keep_kv": spec.keep_kv.to_json() if spec.keep_kv is not None else None,
        "binary": binary_setting,
    }
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def origin_of(manifest: Manifest, spec: Launch) -> dict[str, Any]:
    """What a launch record keeps to tell later whether its server is stale."""
    path = str(manifest.path)
    return {
        "manifest": path,
        "manifest_stat": manifest_stat(path),
        "identity": identity(spec, manifest.server.binary),
    }


def staleness(recorded: str | None, current: str | None, in_manifest: bool) -> Staleness:
    """Whether a server launched as `recorded` is stale now that the manifest makes `current`."""
    if recorded is None:
        return UNKNOWN  # started by an llmctl that kept no origin
    if not in_manifest:
        return Staleness(True, "its profile is no longer in the manifest")
    if current is None:
        return UNKNOWN
    if current != recorded:
        return Staleness(True, "the manifest changed its launch since it started")
    return CURRENT


def check(
    records: Mapping[str, Any],
    identity_of: IdentityOf,
    *,
    cheap: bool = False,
    load: Callable[[str], Manifest | None] | None = None,
) -> dict[str, Staleness]:
    """The staleness of each record's server (records: LaunchRecord by profile). `identity_of`
    is `launch.current_identity` (passed in: this module stays below the launch code, and a
    cheap caller imports it only when a manifest changed). `load` reads a manifest by path (None
    when it cannot be read); the default is the manifest cache, and with `cheap` only a cache
    entry that is still valid."""
    out: dict[str, Staleness] = {}
    manifests: dict[str, Manifest | None] = {}
    for name, rec in records.items():
        origin = rec.extra.get("origin") if isinstance(rec.extra, dict) else None
        if not isinstance(origin, dict) or not origin.get("identity"):
            out[name] = UNKNOWN
            continue
        path = str(origin.get("manifest"))
        stat = origin.get("manifest_stat")
        if stat is not None and manifest_stat(path) == stat:
            out[name] = CURRENT  # the file is as it was at the launch
            continue
        if path not in manifests:
            manifests[path] = (load or _loader(cheap))(path)
        m = manifests[path]
        if m is None:
            why = "the manifest changed since it started" + (
                " (`llmctl ps` checks this profile)" if cheap else " and cannot be read"
            )
            out[name] = Staleness(None, why)
            continue
        in_manifest = rec.profile in m.profiles
        current = identity_of(m, rec.profile) if in_manifest else None
        out[name] = staleness(str(origin["identity"]), current, in_manifest)
    return out


def _loader(cheap: bool) -> Callable[[str], Manifest | None]:
    def load(path: str) -> Manifest | None:
        from pathlib import Path

        from llmctl.errors import LlmctlError
        from llmctl.manifest import cache

        if cheap:
            return cache.cached_manifest(Path(path))
        try:
            return cache.load_manifest(Path(path))
        except LlmctlError:
            return None

    return load
