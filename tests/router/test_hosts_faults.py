"""Hosts that misbehave, as FAKE hosts can on demand (garbage, hanging, enormous, wrong key), in
front of the router on a real uvicorn server with a FAKE supervisor; and a loop between two REAL
`llmctl serve` processes. Each: a clear error or a bounded wait, and everyone else still served."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.fake_host import FakeHost
from fakes.fake_supervisor import FakeSupervisor, fake_spec
from fakes.fake_upstream import FakeUpstream, ServerThread
from fakes.fake_upstream import free_port as another_port
from hosts_helpers import host_manifest, make_host, stop_llama_servers, wait_until
from llmctl.manifest.validate import load_manifest
from llmctl.router.app import create_app
from llmctl.router.hosts import MAX_PROFILES
from llmctl.router.runtime import Router

CLIENT_KEY = "client-key"


@contextmanager
def front(
    tmp_path: Path, local: FakeUpstream, upstreams: str, environ: dict[str, str] | None = None
) -> Iterator[tuple[str, Router]]:
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\nserve:\n  upstreams:\n"
        + textwrap.indent(textwrap.dedent(upstreams).strip("\n"), "    ")
        + "\nprofiles:\n  alpha:\n    model: /models/alpha.gguf\n"
    )
    app = create_app(
        load_manifest(path),
        FakeSupervisor(local, running="alpha"),
        manifest_path=path,
        spec_for=fake_spec,
        environ=environ or {},
    )
    with ServerThread(app) as st:
        yield st.url, app.state.router


def host(url: str, name: str) -> dict[str, Any]:
    hosts = httpx.get(url + "/llmctl/v1/state", timeout=10).json()["hosts"]
    return next(h for h in hosts if h["name"] == name)


def ask(url: str, model: str, **kw: Any) -> httpx.Response:
    # a few tokens: a random-weight model may never say EOS and would write until its context
    # is full, which a loaded machine can take longer than the timeout to do
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, **kw)


def entries(name: str, url: str, poll: str = "0.2s") -> str:
    return f"""
    - {{name: {name}, type: llmctl, url: "{url}", poll_interval: {poll}}}
    - {{name: local, type: managed}}
    """


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("garbage", "not llmctl state (not JSON"),
        ("wrong", "not llmctl state (no llmctl_state: 1"),
        ("hang", "no response within 1 s"),
    ],
)
def test_a_broken_host_is_down_and_the_rest_is_served(tmp_path: Path, mode: str, why: str) -> None:
    with (
        FakeUpstream("local") as local,
        FakeHost("good", profiles=("remote",)) as good,
        FakeHost("bad", profiles=("remote", "bad-only"), state_mode=mode) as bad,
    ):
        upstreams = f"""
        - {{name: bad, type: llmctl, url: "{bad.url}", poll_interval: 0.2s}}
        - {{name: good, type: llmctl, url: "{good.url}", poll_interval: 0.2s}}
        - {{name: local, type: managed}}
        """
        with front(tmp_path, local, upstreams) as (url, _router):
            wait_until("the bad host is polled and found down", lambda: bad.state_polls >= 2)
            wait_until("the good host is up", lambda: host(url, "good")["up"])
            entry = host(url, "bad")
            assert entry["up"] is False and why in entry["error"], entry
            # the good host and the local server go on serving, without waiting on the bad one
            r = ask(url, "remote")
            assert r.status_code == 200 and r.headers["x-llmctl-upstream"] == "good", r.text
            assert ask(url, "alpha").headers["x-llmctl-upstream"] == "local"
            # a name only the bad host could have listed is unknown: it never answered
            missing = ask(url, "bad-only")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"
            assert bad.seen == []


def test_an_enormous_profile_list_is_capped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmctl.router")
    # a poll interval (and so a poll timeout) long enough for a slow machine to make the list
    with (
        FakeUpstream("local") as local,
        FakeHost("big", state_mode="huge:20000") as big,
        front(tmp_path, local, entries("big", big.url, "10s")) as (url, _router),
    ):
        wait_until("the big host is up", lambda: host(url, "big")["up"])
        entry = host(url, "big")
        assert len(entry["profiles"]) == MAX_PROFILES
        assert entry["profiles_dropped"] == 20000 - MAX_PROFILES
        models = httpx.get(url + "/v1/models").json()["data"]
        assert len([m for m in models if m.get("host") == "big"]) == MAX_PROFILES
        assert ask(url, "p999").headers["x-llmctl-upstream"] == "big"
        assert ask(url, f"p{MAX_PROFILES}").status_code == 404
        assert ask(url, "alpha").status_code == 200
    warned = [r.getMessage() for r in caplog.records if "big lists" in r.getMessage()]
    assert warned == [f"host big lists 20000 profiles; only the first {MAX_PROFILES} are used"]


def test_a_client_key_never_reaches_a_host(tmp_path: Path) -> None:
    with FakeUpstream("local") as local, FakeHost("peer", key="peer-secret") as peer:
        upstreams = f"""
        - {{name: peer, type: llmctl, url: "{peer.url}", api_key_env: PEER_KEY, poll_interval: 0.2s}}
        - {{name: local, type: managed}}
        """
        env = {"PEER_KEY": "peer-secret", "LLMCTL_API_KEYS": CLIENT_KEY}
        with front(tmp_path, local, upstreams, env) as (url, _router):
            auth = {"authorization": f"Bearer {CLIENT_KEY}"}
            wait_until(
                "the peer is up",
                lambda: httpx.get(url + "/llmctl/v1/state", headers=auth).json()["hosts"][0]["up"],
            )
            r = ask(url, "remote", headers={"x-api-key": CLIENT_KEY, "cookie": "c=1"})
            assert r.status_code == 200, r.text
            r = ask(url, "remote", headers=auth)
            assert r.status_code == 200, r.text
            assert ask(url, "remote").status_code == 401  # the front's own key check first
    seen = [s.headers for s in peer.seen] + peer.state_headers
    assert len(peer.seen) == 2
    for headers in seen:
        assert headers["authorization"] == "Bearer peer-secret"
        assert CLIENT_KEY not in str(headers) and "cookie" not in headers
    assert peer.seen[0].path == "/upstream/remote/v1/chat/completions"
    assert peer.seen[0].headers["x-llmctl-hops"]  # this router's id, for loop detection


def test_a_host_with_a_wrong_key_is_down_with_a_hint(tmp_path: Path) -> None:
    with FakeUpstream("local") as local, FakeHost("peer", key="peer-secret") as peer:
        upstreams = f"""
        - {{name: peer, type: llmctl, url: "{peer.url}", api_key_env: PEER_KEY, poll_interval: 0.2s}}
        """
        with front(tmp_path, local, upstreams, {"PEER_KEY": "wrong"}) as (url, _router):
            wait_until(
                "the peer was polled", lambda: host(url, "peer")["error"] != "not reached yet"
            )
            err = host(url, "peer")["error"]
            assert "answered 401" in err and "api_key_env" in err


def test_a_host_pointing_at_itself_is_refused(tmp_path: Path) -> None:
    port = another_port()
    with FakeUpstream("local") as local:
        upstreams = f"""
        - {{name: me, type: llmctl, url: "http://127.0.0.1:{port}", poll_interval: 0.2s}}
        """
        path = tmp_path / "profiles.yaml"
        path.write_text(
            "version: 1\nserve:\n  upstreams:\n"
            + textwrap.indent(textwrap.dedent(upstreams).strip("\n"), "    ")
            + "\nprofiles:\n  alpha:\n    model: /models/alpha.gguf\n"
        )
        app = create_app(
            load_manifest(path), FakeSupervisor(local, running="alpha"), spec_for=fake_spec
        )
        with ServerThread(app, port=port) as st:
            # the first poll may come before the socket listens; the next ones reach itself
            wait_until(
                "it finds that it polled itself",
                lambda: "points back at this llmctl serve" in host(st.url, "me")["error"],
            )
            assert host(st.url, "me")["up"] is False


def test_a_request_that_comes_back_is_a_loop_error(tmp_path: Path) -> None:
    with (
        FakeUpstream("local") as local,
        front(tmp_path, local, "- {name: local, type: managed}") as (
            url,
            router,
        ),
    ):
        r = ask(url, "alpha", headers={"x-llmctl-hops": f"other,{router.router_id}"})
        assert r.status_code == 508
        err = r.json()["error"]
        assert err["code"] == "upstream_loop" and "list each other" in err["message"]
        assert local.seen == []
        assert ask(url, "alpha", headers={"x-llmctl-hops": "other"}).status_code == 200


def test_two_real_hosts_listing_each_other_do_not_ping_pong(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    """Both serve `tiny` and list each other first: a request goes A -> B -> A, which A refuses
    (508, the loop); B then falls back to its own server, which answers."""
    from llmctl.testing.testmodels import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny.gguf", arch="llama")
    port_a, port_b = another_port(), another_port()

    def chain(peer_port: int) -> str:
        return f"""
- name: peer
  type: llmctl
  url: http://127.0.0.1:{peer_port}
  poll_interval: 0.5s
- name: local
  type: managed
"""

    a = make_host(
        tmp_path,
        "a",
        host_manifest(
            tmp_path / "a.yaml", llama_server_bin, model, another_port(), upstreams=chain(port_b)
        ),
        port_a,
    )
    b = make_host(
        tmp_path,
        "b",
        host_manifest(
            tmp_path / "b.yaml", llama_server_bin, model, another_port(), upstreams=chain(port_a)
        ),
        port_b,
    )
    try:
        a.start()
        b.start()
        for h in (a, b):
            wait_until(f"{h.name} sees its peer", lambda h=h: host(h.url, "peer")["up"])  # type: ignore[misc]
        r = ask(a.url, "tiny")
        assert r.status_code == 200, r.text + a.logs() + b.logs()
        assert r.headers["x-llmctl-upstream"] == "peer"  # A sent it to B, B answered locally
        assert 'llmctl_rejected_total{reason="loop"} 1' in httpx.get(a.url + "/metrics").text
        assert "upstream peer failed (status): answered 508" in b.logs()
    finally:
        for h in (a, b):
            h.stop()
            stop_llama_servers(h)
