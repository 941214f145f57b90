"""Who may talk to the router from a browser: the `Host` and `Origin` checks.

Loopback is not a trust boundary: a browser on this machine runs every web site's code. Two
attacks reach a router that listens on 127.0.0.1 without keys:

- DNS rebinding: a page at `http://evil.example:8080` re-resolves its own name to 127.0.0.1 and
  then talks to the router "same-origin". Its requests carry `Host: evil.example:8080`, so on a
  loopback bind every `Host` that is not a loopback name or address (or a configured name,
  `serve.allowed_hosts`) is refused.
- Cross-site requests: any page may `fetch` or submit a form to `http://127.0.0.1:8080` with a
  `text/plain` body and no preflight. Browsers name the page in `Origin` (and, without it, say
  `Sec-Fetch-Site: cross-site`), so a request from a browser origin that is not the router's own,
  a loopback one, or a configured one (`serve.cors_origins`) is refused, and CORS headers are only
  ever sent to allowed origins, never echoed for an arbitrary one.

Clients that are not browsers (curl, the SDKs, Open WebUI's backend, other llmctl hosts) send
no `Origin` and keep working. The rules follow Ollama's (403 for a foreign `Host` on a loopback
bind; browser origins of localhost only unless configured) and llama-server's `--cors-origins`.

`OriginPolicy` is pure: it decides from the request's headers and the settings; the router's edge
(router/app.py) turns a refusal into a 403.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Protocol

ANY = "*"
NULL_ORIGIN = "null"
HOSTS_SETTING = "serve.allowed_hosts"
ORIGINS_SETTING = "serve.cors_origins"


class ServeOrigins(Protocol):
    """The two settings of the `serve:` section this module reads."""

    @property
    def allowed_hosts(self) -> list[str]: ...

    @property
    def cors_origins(self) -> list[str]: ...


def _strip_port(authority: str) -> str:
    """`host:port` -> `host`; `[::1]:8080` -> `::1`; lower case."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority[1:end] if end > 0 else authority
    if authority.count(":") == 1:
        return authority.split(":", 1)[0]
    return authority


@functools.lru_cache(maxsize=256)  # asked for every request's Host, mostly the same few names
def is_loopback_name(host: str) -> bool:
    """`localhost`, `*.localhost` (RFC 6761: browsers resolve them to loopback themselves) or a
    loopback address (127.0.0.0/8, ::1, and ::ffff:127.x)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _pattern(text: str) -> re.Pattern[str]:
    """A glob with `*` (any run of characters) into an anchored, case-insensitive regex."""
    parts = (re.escape(p) for p in text.strip().lower().split("*"))
    return re.compile("^" + ".*".join(parts) + "$")


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and which setting would allow it."""

    message: str
    code: str


@dataclass(frozen=True)
class OriginPolicy:
    """The Host and Origin rules of one router, built from its settings and its bind address."""

    check_host: bool
    hosts: tuple[re.Pattern[str], ...]
    any_host: bool
    origins: tuple[re.Pattern[str], ...]
    any_origin: bool
    allow_null: bool
    _hosts_seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_serve(cls, serve: ServeOrigins, bind_host: str) -> OriginPolicy:
        """On a loopback bind the Host is always checked; beyond loopback only when
        `serve.allowed_hosts` names hosts (the bind address itself is always allowed)."""
        hosts = [h.strip() for h in serve.allowed_hosts if h.strip()]
        any_host = ANY in hosts
        bind = _strip_port(bind_host) if bind_host else ""
        unspecified = bind in ("", "0.0.0.0", "::")
        check = not any_host and (is_loopback_name(bind) or bool(hosts))
        patterns = [_pattern(h) for h in hosts if h != ANY]
        if bind and not unspecified and not is_loopback_name(bind):
            patterns.append(_pattern(bind))
        origins = [o.strip() for o in serve.cors_origins if o.strip()]
        return cls(
            check_host=check,
            hosts=tuple(patterns),
            any_host=any_host,
            origins=tuple(_pattern(o.rstrip("/")) for o in origins if o not in (ANY, NULL_ORIGIN)),
            any_origin=ANY in origins,
            allow_null=NULL_ORIGIN in origins,
        )

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.check_host or host_header is None:
            return True  # HTTP/1.0 clients send no Host; browsers always do
        known = self._hosts_seen.get(host_header)
        if known is None:
            # asked for every request, mostly of the same few names
            if len(self._hosts_seen) >= 256:
                self._hosts_seen.clear()
            host = _strip_port(host_header).rstrip(".")
            known = is_loopback_name(host) or any(p.match(host) for p in self.hosts)
            self._hosts_seen[host_header] = known
        return known

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """A browser origin that may use the router: its own, a loopback one, or a configured one."""
        origin = origin.strip().lower().rstrip("/")
        if origin == NULL_ORIGIN:
            return self.allow_null or self.any_origin
        if self.any_origin:
            return True
        scheme, sep, authority = origin.partition("://")
        if sep and scheme in ("http", "https"):
            if host_header is not None and authority == host_header.strip().lower():
                return True  # the router's own pages (the Host was checked before)
            if is_loopback_name(_strip_port(authority)):
                return True
        return any(p.match(origin) for p in self.origins)

    def refusal(
        self,
        host_header: str | None,
        origin: str | None,
        fetch_site: str | None,
        navigation: bool,
    ) -> Refusal | None:
        """Why this request must be refused, or None to let it through.

        `fetch_site` is `Sec-Fetch-Site`; `navigation` is true for a top-level page load
        (`Sec-Fetch-Mode: navigate`), which a foreign page may cause but cannot read.
        """
        if not self.host_allowed(host_header):
            shown = _clip(host_header or "")
            return Refusal(
                f"The Host {shown!r} is not allowed: the router listens on loopback, and a "
                "foreign host name there is how a web page reaches it (DNS rebinding). "
                f"If you reach the router under this name (a reverse proxy, a LAN name), add "
                f"it to {HOSTS_SETTING} in the manifest.",
                "host_not_allowed",
            )
        if origin is not None:
            if self.origin_allowed(origin, host_header):
                return None
            return Refusal(
                f"Requests from the web page origin {_clip(origin)!r} are not allowed: any "
                "site open in a browser could otherwise use, read and switch the models here. "
                f"To let that page use the router, add its origin to {ORIGINS_SETTING} in "
                "the manifest.",
                "origin_not_allowed",
            )
        if fetch_site == "cross-site" and not navigation and not self.any_origin:
            return Refusal(
                "A cross-site request from a web page (Sec-Fetch-Site: cross-site, no Origin) "
                f"is not allowed. To let a page use the router, add its origin to "
                f"{ORIGINS_SETTING} in the manifest.",
                "origin_not_allowed",
            )
        return None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
