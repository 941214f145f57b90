"""The ordered fallback chain: the managed llama-server, other OpenAI-compatible endpoints and
other `llmctl serve` hosts.

Each upstream lists the model names it serves (`*` = any) and may map names; a host (`type:
llmctl`) serves the profiles it reported, within its `models`. A request goes to the first
upstream in the chain that serves its model and whose breaker lets it through, and on a connect
error, a 5xx or a timeout before the first byte, to the next one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from llmctl.router.breaker import CircuitBreaker
from llmctl.router.hosts import HostState

if TYPE_CHECKING:
    from llmctl.manifest.model import ServeConfig, UpstreamConfig

MANAGED = "managed"
HOST = "llmctl"


def _base_url(url: str) -> str:
    """`http://host:8080/v1` and `http://host:8080` both mean the server at `http://host:8080`."""
    url = url.split("?", 1)[0].rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _query(url: str) -> str:
    """The query a base URL carries (`?api-version=...`), added to every request to it."""
    return url.split("?", 1)[1] if "?" in url else ""


def public_url(url: str | None) -> str | None:
    """The URL without credentials or query (for status output)."""
    if url is None:
        return None
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(eq=False)
class Upstream:
    name: str
    kind: Literal["managed", "openai", "llmctl"]
    url: str | None
    models: tuple[str, ...] = ("*",)
    model_map: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    query: str = field(default="", repr=False)
    # the managed server: one breaker per profile, made from `breaker` (the template) on first use
    profile_breakers: dict[str, CircuitBreaker] = field(default_factory=dict, repr=False)
    # type llmctl: what the host reported (kept across reloads, like the breaker)
    host: HostState | None = field(default=None, repr=False)
    poll_interval: float = 2.0

    def __post_init__(self) -> None:
        self._folded = {m.casefold() for m in self.models}
        self._map_folded = {k.casefold(): v for k, v in self.model_map.items()}

    @property
    def managed(self) -> bool:
        return self.kind == MANAGED

    def breaker_for(self, profile: str | None) -> CircuitBreaker:
        """The breaker of what a request uses: the profile on the managed server, else the upstream."""
        if not self.managed or profile is None:
            return self.breaker
        found = self.profile_breakers.get(profile)
        if found is None:
            found = self.profile_breakers[profile] = self.breaker.sibling()
        return found

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Label -> breaker: `name` for another upstream, `name/profile` for the managed one."""
        if not self.managed:
            return {self.name: self.breaker}
        return {f"{self.name}/{p}": b for p, b in sorted(self.profile_breakers.items())}

    def serves(self, names: Iterable[str]) -> bool:
        if "*" in self._folded and self.host is None:
            return True
        return any(self.explicitly_serves(n) for n in names)

    def explicitly_serves(self, name: str) -> bool:
        folded = name.casefold()
        if self.host is not None:
            profile = self.host.lookup(name)
            return profile is not None and self._allows(profile)
        return folded in self._folded or folded in self._map_folded

    def _allows(self, profile: str) -> bool:
        """A host's profile within this entry's `models` (a name or alias of it, or `*`)."""
        assert self.host is not None
        if "*" in self._folded:
            return True
        reported = self.host.profiles.get(profile)
        names = (profile, *(reported.aliases if reported else ()))
        return any(n.casefold() in self._folded for n in names)

    def host_profile(self, names: Iterable[str]) -> str | None:
        """The host's profile for the first of `names` it serves (type llmctl)."""
        if self.host is None:
            return None
        for name in names:
            profile = self.host.lookup(name)
            if profile is not None and self._allows(profile):
                return profile
        return None

    def host_profiles(self) -> list[str]:
        """The host's profiles this entry serves (type llmctl)."""
        if self.host is None:
            return []
        return [p for p in self.host.profiles if self._allows(p)]

    def upstream_model(self, names: Iterable[str]) -> str | None:
        """The name to send upstream for the first of `names` this upstream maps, if any."""
        if self.host is not None:
            return self.host_profile(names)
        for name in names:
            mapped = self.model_map.get(name) or self._map_folded.get(name.casefold())
            if mapped:
                return mapped
        return None

    def url_for(self, path_and_query: str) -> str:
        """The upstream URL of a request path (`/v1/...?...`), with the base URL's own query."""
        assert self.url is not None
        if not self.query:
            return self.url + path_and_query
        sep = "&" if "?" in path_and_query else "?"
        return f"{self.url}{path_and_query}{sep}{self.query}"

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "url": public_url(self.url),
            "models": list(self.models),
            "model_map": dict(self.model_map),
            "timeout_s": self.timeout,
            "api_key_env": self.api_key_env,
            "api_key_set": self.api_key is not None,
            "breaker": self.breaker.snapshot(),
            "profile_breakers": {p: b.snapshot() for p, b in sorted(self.profile_breakers.items())},
            **({"host": self.host.to_json()} if self.host is not None else {}),
        }


def _is_managed(cfg: UpstreamConfig) -> bool:
    """`type: managed`, or an entry without a url: this router's own llama-server."""
    return cfg.type == MANAGED or cfg.url is None


class Upstreams:
    """The chain in order; breakers survive a reload for upstreams that keep their name."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.all = upstreams
        self.managed = next((u for u in upstreams if u.managed), None)

    @classmethod
    def from_serve(
        cls,
        serve: ServeConfig,
        previous: Upstreams | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Upstreams:
        """The chain of a validated `serve:` section: its upstreams in order, the managed server
        first when none is listed (an entry without a url is the managed server too)."""
        from llmctl.manifest.model import UpstreamConfig

        env = os.environ if environ is None else environ
        configured: list[UpstreamConfig] = list(serve.upstreams)
        if not any(_is_managed(u) for u in configured):
            configured.insert(0, UpstreamConfig(name="local", type=MANAGED))
        lim = serve.breaker

        def limited(b: CircuitBreaker) -> CircuitBreaker:
            b.configure(failures=lim.failures, open_for=lim.open_for, max_open_for=lim.max_open_for)
            return b

        old = {u.name: u.breaker for u in previous.all} if previous else {}
        old_profiles = {u.name: u.profile_breakers for u in previous.all} if previous else {}
        # what a host said is kept while its entry keeps its name and url
        old_hosts = {(u.name, u.url): u.host for u in previous.all if u.host} if previous else {}
        built: list[Upstream] = []
        for cfg in configured:
            per_profile = old_profiles.get(cfg.name, {})
            breaker = limited(old.get(cfg.name) or CircuitBreaker(open_for=lim.open_for))
            for b in per_profile.values():
                limited(b)
            key = env.get(cfg.api_key_env) if cfg.api_key_env else None
            managed = _is_managed(cfg)
            is_host = cfg.type == HOST and cfg.url is not None
            url = None if managed or cfg.url is None else _base_url(cfg.url)
            built.append(
                Upstream(
                    name=cfg.name,
                    kind="managed" if managed else "llmctl" if is_host else "openai",
                    url=url,
                    query="" if cfg.url is None else _query(cfg.url),
                    models=tuple(cfg.models) or ("*",),
                    model_map=dict(cfg.model_map),
                    timeout=cfg.timeout,
                    api_key_env=cfg.api_key_env,
                    api_key=key or None,
                    breaker=breaker,
                    profile_breakers=dict(per_profile) if managed else {},
                    host=(old_hosts.get((cfg.name, url)) or HostState()) if is_host else None,
                    poll_interval=cfg.poll_interval,
                )
            )
        return cls(built)

    def chain(
        self, profile: str | None, requested: str | None, aliases: Iterable[str] = ()
    ) -> list[Upstream]:
        """The upstreams that may serve this request, in order."""
        names = list(dict.fromkeys(n for n in (requested, profile, *aliases) if n))
        out: list[Upstream] = []
        for u in self.all:
            if u.managed:
                if profile is not None and u.serves([profile, *aliases]):
                    out.append(u)
            elif u.serves(names):
                out.append(u)
        return out

    def explicit_models(self) -> list[tuple[str, Upstream]]:
        """Model names other upstreams list by name (not `*`), for /v1/models and detection."""
        out: list[tuple[str, Upstream]] = []
        for u in self.all:
            if u.managed:
                continue
            if u.host is not None:
                for p in u.host_profiles():
                    out.append((p, u))
                    out.extend((a, u) for a in u.host.profiles[p].aliases)
                continue
            out.extend((m, u) for m in u.models if m != "*")
            out.extend((m, u) for m in u.model_map if m not in u.models)
        return out

    def find_explicit(self, name: str) -> bool:
        return any(not u.managed and u.explicitly_serves(name) for u in self.all)

    def hosts(self) -> list[Upstream]:
        """The `type: llmctl` entries, in chain order."""
        return [u for u in self.all if u.host is not None]
