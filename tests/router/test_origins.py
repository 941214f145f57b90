"""The Host and Origin rules (router/origins.py) as a pure policy, without a server."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llmctl.router.origins import OriginPolicy, is_loopback_name


@dataclass
class Serve:
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)


def policy(bind: str = "127.0.0.1", **kw: list[str]) -> OriginPolicy:
    return OriginPolicy.from_serve(Serve(**kw), bind)


def refused(p: OriginPolicy, host: str | None, origin: str | None = None, **kw: object) -> str:
    r = p.refusal(host, origin, kw.get("site"), bool(kw.get("navigation", False)))  # type: ignore[arg-type]
    return r.code if r else ""


@pytest.mark.parametrize(
    "name",
    ["localhost", "LOCALHOST", "app.localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]",
     "::ffff:127.0.0.1", "localhost."],
)  # fmt: skip
def test_loopback_names(name: str) -> None:
    assert is_loopback_name(name)


@pytest.mark.parametrize(
    "name", ["evil.example", "localhost.evil.example", "0.0.0.0", "192.168.1.5", "::", "10.0.0.1"]
)
def test_names_that_are_not_loopback(name: str) -> None:
    assert not is_loopback_name(name)


def test_a_loopback_bind_refuses_a_foreign_host() -> None:
    p = policy()
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "localhost", None):
        assert refused(p, host) == "", host
    for host in ("evil.example:8080", "evil.example", "127.0.0.1.nip.io:8080", "192.168.1.5:8080"):
        assert refused(p, host) == "host_not_allowed", host


def test_configured_hosts_and_globs_are_allowed() -> None:
    p = policy(allowed_hosts=["llm.example.com", "*.lan"])
    assert refused(p, "llm.example.com:443") == ""
    assert refused(p, "LLM.Example.com") == ""
    assert refused(p, "gpu.lan:8080") == ""
    assert refused(p, "evil.example") == "host_not_allowed"
    assert refused(policy(allowed_hosts=["*"]), "anything.example") == ""


def test_beyond_loopback_the_host_is_checked_only_when_configured() -> None:
    assert refused(policy("0.0.0.0"), "gpu-box:8080") == ""
    assert refused(policy("192.168.1.5"), "anything:8080") == ""
    p = policy("192.168.1.5", allowed_hosts=["gpu-box"])
    assert refused(p, "gpu-box:8080") == ""
    assert refused(p, "192.168.1.5:8080") == ""  # the bind address itself
    assert refused(p, "127.0.0.1:8080") == ""
    assert refused(p, "evil.example:8080") == "host_not_allowed"


def test_browser_origins_own_loopback_configured() -> None:
    p = policy(cors_origins=["https://chat.example.com", "http://*.lan:3000"])
    host = "127.0.0.1:8080"
    for origin in (
        "http://127.0.0.1:8080",  # its own pages
        "http://localhost:3000",  # a page served on this machine
        "http://[::1]:5173",
        "https://chat.example.com",
        "https://CHAT.example.com/",
        "http://box.lan:3000",
    ):
        assert refused(p, host, origin) == "", origin
    for origin in (
        "https://evil.example",
        "http://chat.example.com",  # scheme counts
        "http://box.lan:3001",
        "null",  # sandboxed frames and file:// pages
        "chrome-extension://abcdef",
    ):
        assert refused(p, host, origin) == "origin_not_allowed", origin


def test_own_origin_follows_the_allowed_host() -> None:
    p = policy(allowed_hosts=["llm.example.com"])
    assert refused(p, "llm.example.com", "https://llm.example.com") == ""
    assert refused(p, "llm.example.com", "https://other.example.com") == "origin_not_allowed"


def test_star_and_null_origins_when_configured() -> None:
    assert refused(policy(cors_origins=["*"]), "127.0.0.1:1", "https://evil.example") == ""
    assert refused(policy(cors_origins=["null"]), "127.0.0.1:1", "null") == ""
    assert refused(policy(cors_origins=["chrome-extension://*"]), "x", None) == "host_not_allowed"
    ext = policy(cors_origins=["chrome-extension://*"])
    assert refused(ext, "127.0.0.1:1", "chrome-extension://abcdef") == ""


def test_a_cross_site_request_without_origin_is_refused_but_a_navigation_is_not() -> None:
    p = policy()
    assert refused(p, "127.0.0.1:8080", None, site="cross-site") == "origin_not_allowed"
    assert refused(p, "127.0.0.1:8080", None, site="cross-site", navigation=True) == ""
    assert refused(p, "127.0.0.1:8080", None, site="same-origin") == ""
    assert refused(p, "127.0.0.1:8080", None, site="none") == ""
    assert refused(policy(cors_origins=["*"]), "127.0.0.1:8080", None, site="cross-site") == ""


def test_refusals_say_which_setting_allows_it() -> None:
    p = policy()
    r = p.refusal("evil.example:8080", None, None, False)
    assert r is not None and "serve.allowed_hosts" in r.message and "evil.example" in r.message
    r = p.refusal("127.0.0.1:8080", "https://evil.example", None, False)
    assert r is not None and "serve.cors_origins" in r.message and "evil.example" in r.message
    long = "x" * 10_000
    r = p.refusal(long, None, None, False)
    assert r is not None and len(r.message) < 1000
