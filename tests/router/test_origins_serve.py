"""A real `llmctl serve` (no keys, loopback: the default install) in front of a real llama-server,
attacked as a web page would: a foreign Host (DNS rebinding), cross-site `fetch` and form posts
with `text/plain` bodies, CORS preflights; and a page under a foreign origin in headless Chromium.
Non-browser clients (curl-like httpx, the OpenAI SDK) keep working unchanged."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.fake_upstream import free_port as another_port
from serving import Served, start_serve, stop_serve

CHROMIUM = os.environ.get("LLMCTL_TEST_CHROMIUM") or shutil.which("chromium") or ""
EVIL = "https://evil.example"


def _manifest(path: Path, binary: Path, model: Path, serve_extra: str = "") -> Path:
    path.write_text(
        f"""version: 1
server:
  binary: {binary}
  port: {another_port()}
serve:
  default_profile: tiny
{serve_extra}
profiles:
  tiny:
    model: {model}
    ctx_size: 512
    parallel: 1
  other:
    model: {model}
    ctx_size: 256
    parallel: 1
"""
    )
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmctl.testing.testmodels import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf", arch="llama")


@contextlib.contextmanager
def serving(
    tmp_path: Path, binary: Path, model: Path, port: int, extra: str = ""
) -> Iterator[Served]:
    from llmctl import paths
    from llmctl.supervisor.lifecycle import Supervisor

    s = start_serve(_manifest(tmp_path / "profiles.yaml", binary, model, extra), port, tmp_path)
    try:
        yield s
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


@pytest.fixture
def served(tmp_path: Path, llama_server_bin: Path, model: Path, free_port: int) -> Iterator[Served]:
    with serving(tmp_path, llama_server_bin, model, free_port) as s:
        r = httpx.post(s.url + "/models/switch", json={"profile": "tiny"}, timeout=120)
        assert r.status_code == 200, r.text
        yield s


def running(served: Served) -> str | None:
    status = httpx.get(served.url + "/models/status", timeout=10).json()
    server = status["server"]
    return server["profile"] if server.get("running") else None


def test_a_foreign_host_is_refused_everywhere(served: Served) -> None:
    for method, path in [
        ("GET", "/models/status"),
        ("GET", "/ui/api/state"),
        ("GET", "/ui/"),
        ("GET", "/ui/api/log?lines=5"),
        ("GET", "/v1/models"),
        ("GET", "/slots"),
        ("GET", "/health"),
        ("POST", "/models/stop"),
        ("POST", "/v1/chat/completions"),
    ]:
        r = httpx.request(
            method, served.url + path, headers={"Host": "rebind.evil.example:8080"}, content=b"{}"
        )
        assert r.status_code == 403, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "host_not_allowed"
        assert "serve.allowed_hosts" in err["message"]
        assert "access-control-allow-origin" not in r.headers
    assert running(served) == "tiny"
    # loopback names are fine, with any port
    for host in ("localhost:1234", "127.0.0.1", "[::1]:9"):
        assert httpx.get(served.url + "/v1/models", headers={"Host": host}).status_code == 200


def test_cross_site_text_plain_posts_do_nothing_and_echo_no_origin(served: Served) -> None:
    headers = {"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"}
    for path, body in [
        ("/models/stop", b'{"profile": "tiny"}'),
        ("/models/switch", b'{"profile": "other"}'),
        ("/slots/0?action=erase", b"{}"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}'),
    ]:
        r = httpx.post(served.url + path, content=body, headers=headers)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "origin_not_allowed"
        assert "serve.cors_origins" in r.json()["error"]["message"]
        assert "access-control-allow-origin" not in r.headers
    # a form post or a no-cors fetch without Origin is still marked cross-site by the browser
    r = httpx.post(
        served.url + "/models/stop",
        content=b"x=1",
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    )
    assert r.status_code == 403
    assert running(served) == "tiny"
    # reading is refused too
    r = httpx.get(served.url + "/ui/api/state", headers={"Origin": EVIL})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


def test_preflights(served: Served) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    r = httpx.options(served.url + "/models/stop", headers={"Origin": EVIL, **ask})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers
    local = "http://localhost:5173"  # a page served on this machine may use the router
    r = httpx.options(served.url + "/v1/chat/completions", headers={"Origin": local, **ask})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == local
    assert "origin" in r.headers["vary"].lower()


def test_non_browser_clients_and_own_origin_keep_working(served: Served) -> None:
    with served.client(timeout=60) as client:
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert reply.choices
    own = served.url  # the dashboard's own origin
    r = httpx.get(served.url + "/ui/api/state", headers={"Origin": own})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == own
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(
        served.url + "/v1/chat/completions", json=body, headers={"Origin": own}, timeout=60
    )
    assert r.status_code == 200, r.text


def test_configured_hosts_and_origins(
    tmp_path: Path, llama_server_bin: Path, model: Path, free_port: int
) -> None:
    extra = "  allowed_hosts: [llm.example.com]\n  cors_origins: ['https://chat.example.com']\n"
    with serving(tmp_path, llama_server_bin, model, free_port, extra) as s:
        r = httpx.get(s.url + "/v1/models", headers={"Host": "llm.example.com"})
        assert r.status_code == 200
        r = httpx.get(s.url + "/v1/models", headers={"Host": "other.example.com"})
        assert r.status_code == 403
        ok = "https://chat.example.com"
        r = httpx.get(s.url + "/v1/models", headers={"Origin": ok})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ok
        assert httpx.get(s.url + "/v1/models", headers={"Origin": EVIL}).status_code == 403


def test_a_bad_setting_is_a_positioned_manifest_error(tmp_path: Path) -> None:
    from llmctl.errors import LlmctlError
    from llmctl.manifest.validate import load_manifest

    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\nserve:\n  cors_origins: ['chat.example.com']\n"
        "profiles:\n  a:\n    model: /m.gguf\n"
    )
    with pytest.raises(LlmctlError) as info:
        load_manifest(path)
    text = str(info.value) + " ".join(str(d) for d in getattr(info.value, "details", []))
    assert "profiles.yaml:3" in text and "scheme://host" in text


# --- a page under a foreign origin, in a real browser -----------------------------------------

ATTACK = """<!doctype html><html><body><form id=f method=POST enctype=text/plain
 action="ROUTER/models/stop" target=sink><input name='{"profile":"tiny","x":"' value='"}'></form>
<iframe name=sink></iframe><script>
async function attempt(name, url, init) {
  try { const r = await fetch(url, init); return name + ":" + r.status + ":" + (await r.text()); }
  catch (e) { return name + ":blocked"; }
}
window.results = (async () => {
  const out = [];
  out.push(await attempt("read-state", "ROUTER/ui/api/state", {}));
  out.push(await attempt("read-status", "ROUTER/models/status", {}));
  out.push(await attempt("stop", "ROUTER/models/stop",
    {method: "POST", headers: {"Content-Type": "text/plain"}, body: '{"profile":"tiny"}'}));
  out.push(await attempt("switch-no-cors", "ROUTER/models/switch",
    {method: "POST", mode: "no-cors", body: '{"profile":"other"}'}));
  out.push(await attempt("rebind-state", "REBIND/ui/api/state", {}));
  document.getElementById("f").submit();
  return out;
})();
</script></body></html>"""


class _AttackPage(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (apt-get install chromium)")
def test_a_foreign_page_in_chromium_can_neither_read_nor_change_anything(served: Served) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    router_port = served.url.rsplit(":", 1)[1]
    _AttackPage.page = (
        ATTACK.replace("ROUTER", served.url)
        .replace("REBIND", f"http://evil.test:{router_port}")
        .encode()
    )
    site = ThreadingHTTPServer(("127.0.0.1", 0), _AttackPage)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    pw = sync_api.sync_playwright().start()
    try:
        # evil.test resolves to this machine, as a rebinding DNS server would make it
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--host-resolver-rules=MAP evil.test 127.0.0.1"],
        )
        try:
            page = browser.new_page()
            page.goto(f"http://evil.test:{site.server_address[1]}/")
            results = page.evaluate("window.results")
            page.wait_for_load_state("networkidle")
            # the page reads nothing: every cross-origin answer is refused without CORS headers
            assert results[:3] == ["read-state:blocked", "read-status:blocked", "stop:blocked"]
            assert results[3] == "switch-no-cors:0:"  # opaque: the page learns nothing
            assert results[4] == "rebind-state:blocked"
            # the rebound name itself, loaded as a page, is refused
            page.goto(f"http://evil.test:{router_port}/ui/")
            assert "host_not_allowed" in page.content()
            # while the dashboard under its own origin still works
            own = browser.new_page()
            own.goto(served.url + "/ui/")
            own.wait_for_selector("body[data-ready]", timeout=60_000)
            assert own.query_selector('.card[data-profile="tiny"]') is not None
        finally:
            browser.close()
    finally:
        pw.stop()
        site.shutdown()
        site.server_close()
    assert running(served) == "tiny"  # nothing was stopped or switched
