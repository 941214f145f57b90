"""The dashboard in a real headless Chromium (the distribution's package, driven by playwright)
against a real `llmctl serve` with real tiny models.

Screenshots of the main states go to screenshots/ at the top of the repository (git-ignored), or
to $LLMCTL_TEST_SCREENSHOTS. Chromium comes from `apt-get install chromium` (`make browser`);
without it these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard_helpers import KEY, serving_dashboard, write_models
from serving import Served

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LLMCTL_TEST_CHROMIUM") or shutil.which("chromium") or ""
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM,
        reason="Chromium is not installed: `make browser` (apt-get install chromium) installs it",
    ),
]
AUTH = {"Authorization": f"Bearer {KEY}"}
LOAD_TIMEOUT_MS = 90_000


def shots_dir() -> Path:
    folder = Path(os.environ.get("LLMCTL_TEST_SCREENSHOTS") or ROOT / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pw = sync_api.sync_playwright().start()
    try:
        # root in a container has no user namespace for Chromium's sandbox
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def served(
    tmp_path: Path, llama_server_bin: Path, models: tuple[Path, Path, Path], free_port: int
) -> Iterator[Served]:
    with serving_dashboard(tmp_path, llama_server_bin, models, free_port) as s:
        yield s


class Page:
    """A page of the browser with its console errors collected."""

    def __init__(self, browser: Any, served: Served, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # which request failed: the console says only "Failed to load resource: ... 503"
        self.page.on(
            "response",
            lambda r: (
                self.errors.append(f"{r.request.method} {r.url} -> {r.status}")
                if r.status >= 400
                else None
            ),
        )
        self.url = served.url + "/ui/"

    def sign_in(self, key: str = KEY) -> None:
        p = self.page
        p.goto(self.url)
        p.wait_for_selector("#login[open]")
        p.fill("#key", key)
        p.click("#login-submit")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(shots_dir() / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Page]:
    pg = Page(browser, served, viewport={"width": 1200, "height": 900})
    try:
        yield pg
    finally:
        pg.close()


def test_wrong_key_is_refused_then_the_page_shows_profiles(page: Page) -> None:
    p = page.page
    page.sign_in("not-the-key")
    p.wait_for_selector("#login-error:has-text('refused')")
    assert p.is_visible("#login") and p.is_hidden("#main")
    page.shot("login-refused")
    page.errors.clear()  # the browser reports the refused request (401) itself

    p.fill("#key", KEY)
    p.click("#login-submit")
    p.wait_for_selector("body[data-ready]")
    names = p.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.profile)")
    assert names == ["tiny-a", "tiny-b", "broken"]
    assert p.text_content('.card[data-profile="tiny-a"] [data-role="state"]') == "idle"
    assert p.is_visible('.bar[data-device="gpu0"]') and p.is_visible('.bar[data-device="ram"]')
    assert "queue depth 0 of" in (p.text_content("#queue") or "")
    # the key is kept for this tab's session only
    assert p.evaluate("sessionStorage.getItem('llmctl.key')") == KEY
    assert p.evaluate("localStorage.getItem('llmctl.key')") is None
    page.shot("profiles")
    assert page.errors == []


def test_load_from_the_page_fills_the_device_bar_and_follows_the_log(
    page: Page, served: Served
) -> None:
    p = page.page
    page.sign_in()
    p.wait_for_selector("body[data-ready]")
    gpu_share = '.bar[data-device="gpu0"] .seg[data-profile="tiny-a"]'
    assert p.query_selector(gpu_share) is None

    # pointing at a profile that is not loaded shows where it would go
    p.hover('.card[data-profile="tiny-a"]')
    p.wait_for_selector('.bar[data-device="gpu0"] .seg.k-ghost[data-ghost="tiny-a"]')
    assert "fits" in p.text_content(".device .ghost-note")
    page.shot("hover-not-loaded")

    p.click('.card[data-profile="tiny-a"] [data-action="load"]')
    p.wait_for_selector('.card[data-profile="tiny-a"][data-state="ready"]', timeout=LOAD_TIMEOUT_MS)
    p.wait_for_selector(gpu_share)
    status = httpx.get(served.url + "/models/status", headers=AUTH).json()
    assert status["server"]["profile"] == "tiny-a" and status["server"]["running"]

    # llama-server's log is followed live: a request's lines show up without a reload
    p.wait_for_selector("#log div:has-text('model loaded')", timeout=LOAD_TIMEOUT_MS)
    body = {"model": "A", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=90)
    assert r.status_code == 200
    said = r.json()["usage"]["completion_tokens"]  # a random-weight model may end before 3
    p.wait_for_selector("#log div:has-text('print_timing')", timeout=30_000)
    # the request is listed, with its token counts
    p.wait_for_selector("#requests tbody tr:has-text('/v1/chat/completions')", timeout=30_000)
    row = p.text_content("#requests tbody tr")
    assert row is not None and "tiny-a" in row and "200" in row and f"→ {said}" in row
    # and its generation speed, from llama-server's timings
    speed = round(r.json()["timings"]["predicted_per_second"], 2)
    assert p.text_content("#requests tbody tr td:nth-child(7)") == f"{speed:.1f}"

    # search keeps the matching lines only
    p.fill("#log-search", "print_timing")
    shown = p.eval_on_selector_all("#log div", "ds => ds.map(d => d.textContent)")
    assert shown and all("print_timing" in line for line in shown)
    page.shot("loaded")

    p.click('.card[data-profile="tiny-a"] [data-action="unload"]')
    p.wait_for_selector('.card[data-profile="tiny-a"][data-state="idle"]', timeout=LOAD_TIMEOUT_MS)
    p.wait_for_selector(gpu_share, state="detached")
    assert page.errors == []


def test_a_failed_load_shows_llama_servers_error_line_first(page: Page) -> None:
    p = page.page
    page.sign_in()
    p.wait_for_selector("body[data-ready]")
    p.click('.card[data-profile="broken"] [data-action="load"]')
    p.wait_for_selector(
        '.card[data-profile="broken"][data-state="failed"]', timeout=LOAD_TIMEOUT_MS
    )
    line = p.text_content('.card[data-profile="broken"] .errbox .line') or ""
    assert "llama_model_load" in line or "error" in line.lower(), line
    assert not line[:1].isdigit()  # llama.cpp's time and level prefix left out
    # the failed launch's log shows up in the log panel, its error lines marked
    p.wait_for_selector("#log div.E", timeout=30_000)
    notice = p.text_content("#notice") or ""
    assert notice.startswith("Loading broken failed: llama-server"), notice  # said once
    page.shot("failed-load")
    assert page.errors == []


def test_phone_width_dark_and_keyboard(browser: Any, served: Served) -> None:
    pg = Page(browser, served, viewport={"width": 390, "height": 844}, color_scheme="dark")
    try:
        p = pg.page
        pg.sign_in()
        p.wait_for_selector("body[data-ready]")
        # nothing wider than the screen
        assert p.evaluate("document.documentElement.scrollWidth") <= 390
        bg = p.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(17, 20, 24)"  # the dark palette
        # the load buttons are reachable from the keyboard
        focused = []
        for _ in range(12):
            p.keyboard.press("Tab")
            focused.append(p.evaluate("document.activeElement.dataset.action || ''"))
        assert "load" in focused
        pg.shot("phone-dark")
        assert pg.errors == []
    finally:
        pg.close()


def test_a_stale_server_has_a_badge_on_its_card(page: Page, served: Served) -> None:
    """The card of a server that runs an old launch says so. Which server is stale is decided
    server-side (tests/supervisor/test_stale.py); here the real state is marked on its way to the page, since
    serve retires a stale server as soon as its requests in flight are done."""
    body = {"model": "A", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=90)
    assert r.status_code == 200, r.text
    why = "the manifest changed its launch since it started"

    def mark(route: Any) -> None:
        resp = route.fetch()
        data = resp.json()
        for p in data["profiles"]:
            if p["name"] == "tiny-a":
                assert p["stale"] is False  # the real state: launched from serve's manifest
                p.update(stale=True, stale_why=why)
        route.fulfill(response=resp, json=data)

    p = page.page
    p.route("**/ui/api/state", mark)
    page.sign_in()
    p.wait_for_selector('.card[data-profile="tiny-a"] [data-role="stale"]')
    badge = p.locator('.card[data-profile="tiny-a"] [data-role="stale"]')
    assert badge.text_content() == "stale" and why in (badge.get_attribute("title") or "")
    assert p.locator('.card[data-profile="tiny-b"] [data-role="stale"]').count() == 0
    page.shot("stale")
    assert page.errors == []
