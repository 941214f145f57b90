"""Request detection and routing: which paths go upstream, which profile (or other upstream) a
request names, and in which order its chain is tried.

The model comes from the JSON body's `model`, else the `model` query parameter, else the path form
`/upstream/{profile}/{path}`, else the profile that runs (or `serve.default_profile`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from llmctl.llama.endpoints import CORS_PROXY, ROUTES
from llmctl.router.errors import bad_request, model_not_found
from llmctl.router.hosts import Standing, order
from llmctl.router.upstreams import Upstream, Upstreams

UPSTREAM_PREFIX = "/upstream/"

# llama-server paths the router answers itself: its own health, metrics and model list
_OWN = frozenset({"/health", "/v1/health", "/metrics", "/models", "/v1/models"})
# every other path llama-server registers goes to the server of the request's profile
_NATIVE = frozenset(path for _, path in ROUTES if ":" not in path) - _OWN
_NATIVE_PREFIXES = tuple(path.split(":", 1)[0] for _, path in ROUTES if ":" in path)

RouteKind = Literal["proxy", "upstream", "cors_proxy", "own"]


def route_kind(path: str) -> RouteKind:
    """Where a request path goes: the proxy, the `/upstream/` form, the CORS proxy, or the router."""
    if path.startswith("/v1/"):
        if path in _OWN or path.startswith("/v1/models/"):
            return "own"
        return "proxy"  # any other /v1/ path: other OpenAI-compatible upstreams may serve it
    if path in _NATIVE:
        return "cors_proxy" if path == CORS_PROXY else "proxy"
    if path.startswith(_NATIVE_PREFIXES):
        return "proxy"
    if path.startswith(UPSTREAM_PREFIX):
        return "upstream"
    return "own"


def split_upstream_path(raw_path: bytes) -> tuple[str, bytes] | None:
    """`/upstream/{profile}/{rest}` -> (profile, b"/{rest}"); None without a profile segment."""
    rest = raw_path[len(UPSTREAM_PREFIX) :]
    name, _, tail = rest.partition(b"/")
    if not name:
        return None
    return unquote(name.decode("latin-1")), b"/" + tail


def query_model(query_string: bytes) -> str | None:
    """The `model` query parameter (the first one), if any."""
    if b"model" not in query_string:
        return None
    values = parse_qs(query_string.decode("latin-1")).get("model")
    return values[0] if values else None


@dataclass(frozen=True)
class Target:
    """`profile` is the managed profile to run (None: only other upstreams serve `model`)."""

    profile: str | None
    model: str | None


class ModelIndex:
    """Profile names and aliases of a manifest, matched exactly, then case-insensitively."""

    def __init__(self, manifest: Any) -> None:
        self.profiles: dict[str, list[str]] = {}
        self.descriptions: dict[str, str | None] = {}
        self.ttls: dict[str, float | None] = {}
        self._exact: dict[str, str] = {}
        self._folded: dict[str, str] = {}
        for name, prof in getattr(manifest, "profiles", {}).items():
            aliases = [str(a) for a in (getattr(prof, "aliases", None) or [])]
            self.profiles[name] = aliases
            self.descriptions[name] = getattr(prof, "description", None)
            ttl = getattr(prof, "ttl", None)
            self.ttls[name] = float(ttl) if ttl else None
        # profile names win over aliases, exact matches over case-insensitive ones
        for name in self.profiles:
            self._exact[name] = name
        for name, aliases in self.profiles.items():
            for alias in aliases:
                self._exact.setdefault(alias, name)
        for key, name in self._exact.items():
            self._folded.setdefault(key.casefold(), name)

    def lookup(self, name: str) -> str | None:
        return self._exact.get(name) or self._folded.get(name.casefold())

    def names(self) -> list[str]:
        return list(self._exact)

    def aliases(self, profile: str) -> list[str]:
        return self.profiles.get(profile, [])


def detect(
    index: ModelIndex,
    upstreams: Upstreams,
    model: object,
    *,
    running: str | None,
    default: str | None,
) -> Target:
    """The target of a request whose body says `model` (None when absent)."""
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string.", param="model", code="invalid_type")
    if model:
        profile = index.lookup(model)
        if profile is not None:
            return Target(profile, model)
        if upstreams.find_explicit(model):
            return Target(None, model)
        available = index.names() + [m for m, _ in upstreams.explicit_models()]
        raise model_not_found(model, list(dict.fromkeys(available)))
    profile = running or (index.lookup(default) if default else None)
    if profile is None:
        raise bad_request(
            "No 'model' in the request, no profile is running and serve.default_profile is not set. "
            f"Name one of: {', '.join(index.names()) or '(none)'}.",
            param="model",
            code="model_required",
        )
    return Target(profile, None)


def order_chain(
    chain: list[Upstream],
    target: Target,
    index: ModelIndex,
    local: Callable[[str | None], Standing],
) -> list[Upstream]:
    """With hosts in the chain: the one that has the profile loaded first, else one where it
    fits without unloading anything, else chain order (`hosts.order`). `local` is this router's
    own standing for a profile (loaded here, fits here)."""
    if not any(u.host is not None for u in chain):
        return chain
    names = [n for n in (target.model, target.profile) if n]
    if target.profile:
        names.extend(index.aliases(target.profile))
    standings: list[Standing] = []
    for u in chain:
        if u.managed:
            standings.append(local(target.profile))
            continue
        found = u.host_profile(names)
        reported = u.host.profiles.get(found) if u.host is not None and found else None
        if reported is None:
            standings.append(Standing(host=False))
        else:
            standings.append(Standing(host=True, loaded=reported.loaded, fits=reported.fits))
    return [chain[i] for i in order(standings)]
