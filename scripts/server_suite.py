"""llama.cpp's own server test suite (tools/server/tests) in its external-server mode, run against
llama-server directly and then through `llmctl serve` in front of the same command line; prints the
totals per mode and every test whose outcome differs.

    make server-suite                                   # or:
    uv run python scripts/server_suite.py [-k EXPR] [--binary PATH]

The suite's Python dependencies go into their own venv next to the llama.cpp source (from PyPI,
once). The model is a tiny random-weight GGUF, so many tests fail in both modes (they expect a
trained model's words); what matters is that each test has the same outcome in both modes.
Exit status: 0 when every outcome is the same (or differs as EXPECTED lists, saying why), 1
otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "tinyllama-2"
# the model names the suite sends: llama-server ignores them, the router needs them as aliases
ALIASES = [
    "test",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct",
    "davinci-002",
    "text-embedding-3-small",
    "gpt-4.1",
    "ggml-org/tinygemma3-GGUF:Q8_0",  # the stream and router tests' model, with its slash
]
# Outcomes that differ on purpose, and why. Anything else that differs fails the run.
EXPECTED = {
    "unit.test_metrics::test_metrics_prometheus_format": (
        "the router's /metrics is its own, then each server's samples labelled with their "
        "profile; the test reads only unlabelled llama-server samples (the unlabelled text is "
        "under /upstream/{profile}/metrics)"
    ),
    "unit.test_router::test_router_chat_completion_stream[non-existent/model-False]": (
        "a model name that no profile, alias or upstream has is a 404 model_not_found through "
        "the router (as in llama.cpp's router mode, which this test is for); one llama-server "
        "alone ignores the name"
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary_path(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("LLMCTL_LLAMA_SERVER"):
        return Path(os.environ["LLMCTL_LLAMA_SERVER"])
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-llama-server.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def suite_python(tests: Path) -> Path:
    """A venv with the suite's requirements.txt, made once next to the source tree."""
    venv = tests.parents[3] / "server-tests-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        # uv on PATH (how `make` found it), else the module of whichever python has it
        found = shutil.which("uv")
        uv = [found] if found else [sys.executable, "-m", "uv"]
        subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [*uv, "pip", "install", "--quiet", "--python", str(python),
             "-r", str(tests / "requirements.txt")],
            check=True,
        )  # fmt: skip
    return python


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout:g} s")


def run_suite(python: Path, tests: Path, port: int, junit: Path, select: list[str]) -> None:
    env = {**os.environ, "DEBUG_EXTERNAL": "1", "PORT": str(port)}
    cmd = [str(python), "-m", "pytest", "unit", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *select]  # fmt: skip
    subprocess.run(cmd, cwd=tests, env=env, stdout=subprocess.DEVNULL, check=False)


def outcomes(junit: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "error" in kinds:
            out[name] = "error"
        elif "failure" in kinds:
            out[name] = "failed"
        elif "skipped" in kinds:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def totals(result: dict[str, str]) -> str:
    counts = {
        k: sum(1 for v in result.values() if v == k)
        for k in ("passed", "failed", "error", "skipped")
    }
    return ", ".join(f"{n} {k}" for k, n in counts.items()) + f" ({len(result)} tests)"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--binary", help="llama-server (else $LLMCTL_LLAMA_SERVER, else the build script)"
    )
    ap.add_argument("-k", dest="expr", help="only the tests pytest's -k EXPR selects")
    args = ap.parse_args()
    binary = binary_path(args.binary)
    tests = binary.parents[2] / "src" / "tools" / "server" / "tests"
    if not (tests / "unit").is_dir():
        raise SystemExit(f"no llama.cpp server tests at {tests}")
    python = suite_python(tests)
    select = ["-k", args.expr] if args.expr else []

    from llmctl.testing.testmodels import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_model(tmp / "tiny.gguf", arch="llama")
        llama_port, router_port = free_port(), free_port()
        manifest = tmp / "profiles.yaml"
        manifest.write_text(
            f"version: 1\nserver:\n  binary: {binary}\n  port: {llama_port}\n"
            f"profiles:\n  {PROFILE}:\n    model: {model}\n    aliases: [{', '.join(ALIASES)}]\n"
            "    ctx_size: 512\n    parallel: 2\n    metrics: true\n    seed: 42\n"
        )
        env = {**os.environ, "LLMCTL_STATE_DIR": str(tmp / "state")}
        llmctl = [sys.executable, "-m", "llmctl"]
        results: dict[str, dict[str, str]] = {}

        # 1. llama-server directly, started by the supervisor with the profile's command line
        subprocess.run([*llmctl, "switch", PROFILE, "--manifest", str(manifest)], env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            run_suite(python, tests, llama_port, tmp / "direct.xml", select)
        finally:
            subprocess.run([*llmctl, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        results["direct"] = outcomes(tmp / "direct.xml")

        # 2. the same command line behind `llmctl serve`
        log = (tmp / "serve.log").open("wb")
        serve = subprocess.Popen(
            [*llmctl, "serve", "--manifest", str(manifest), "--port", str(router_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{router_port}/health")
            req = urllib.request.Request(
                f"http://127.0.0.1:{router_port}/models/switch",
                data=f'{{"profile": "{PROFILE}"}}'.encode(),
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
            run_suite(python, tests, router_port, tmp / "router.xml", select)
        finally:
            serve.terminate()
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
            subprocess.run([*llmctl, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        results["router"] = outcomes(tmp / "router.xml")

    direct, router = results["direct"], results["router"]
    print(f"llama.cpp server tests, external mode, tiny model ({binary})")
    print(f"  direct:        {totals(direct)}")
    print(f"  llmctl serve:  {totals(router)}")
    differ = sorted(n for n in direct.keys() | router.keys() if direct.get(n) != router.get(n))
    same = len(direct.keys() | router.keys()) - len(differ)
    unexpected = [n for n in differ if n not in EXPECTED]
    for name in differ:
        why = f" (expected: {EXPECTED[name]})" if name in EXPECTED else ""
        print(
            f"  differs: {name}: direct {direct.get(name, '-')}, router {router.get(name, '-')}{why}"
        )
    print(
        f"  {same} test(s) with the same outcome; {len(differ)} differ, "
        f"{len(unexpected)} of them unexpectedly"
    )
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
