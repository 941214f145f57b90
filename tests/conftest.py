"""Shared test harness.

- Every test runs with its own state, cache and config folders (no test sees the user's files).
- `llama_server_bin` is the real llama-server, built once by scripts/build-llama-server.sh.
- The session fails if any process started by a test is still alive at the end: every child
  inherits LLMCTL_TEST_SESSION, and /proc is searched for it.
- The tests mirror the package (tests/<package>/test_<module>.py); the tier is a marker, not a
  file name: `real` (the real llama-server: a test that asks for `llama_server_bin` or `rpc_build`), `fakes`
  (stand-ins from tests/fakes/ for what a real server cannot do on demand), `fuzz` (random
  inputs) and `browser` (headless Chromium) - the last two set by their files. A test with none
  of them is a unit: no process. `pytest -m "not real and not browser"` runs the quick tiers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SESSION_MARK = f"LLMCTL_TEST_SESSION={uuid.uuid4().hex}"


def pytest_configure(config: pytest.Config) -> None:
    key, value = SESSION_MARK.split("=", 1)
    os.environ[key] = value


TIERS = ("real", "fakes", "fuzz", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier markers that follow from what a test uses (see the docstring)."""
    fakes: dict[str, bool] = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "llama_server_bin" in names or "rpc_build" in names:
            item.add_marker("real")
            continue
        path = str(item.path)
        if path not in fakes:
            text = item.path.read_text(errors="replace")
            fakes[path] = "FAKE" in text or "fakes." in text or "fake_spec" in text
        if fakes[path]:
            item.add_marker("fakes")


def _marked_processes() -> list[int]:
    needle = SESSION_MARK.encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # zombies are dead already; their parent reaps them
        if needle in environ.split(b"\0") and ") Z " not in stat:
            found.append(int(entry.name))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + 5
    leftovers = _marked_processes()
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = _marked_processes()
    if not leftovers:
        return
    lines = []
    for pid in leftovers:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        lines.append(f"  pid {pid}: {cmd}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    sys.stderr.write(
        "\nprocesses left behind by the tests (now killed):\n" + "\n".join(lines) + "\n"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every llmctl folder at tmp paths; no test touches the user's files."""
    home = tmp_path / "home"
    for var in list(os.environ):
        if var.startswith("LLMCTL_") and not var.startswith("LLMCTL_TEST_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("LLMCTL_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "xdg-state"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def free_port() -> int:
    from processes import free_port as port

    return port()


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """The real llama-server: $LLMCTL_TEST_LLAMA_SERVER, else built (or reused) by the project script."""
    given = os.environ.get("LLMCTL_TEST_LLAMA_SERVER")
    if given:
        path = Path(given)
        if not os.access(path, os.X_OK):
            pytest.fail(f"LLMCTL_TEST_LLAMA_SERVER={given} is not an executable")
        return path
    script = ROOT / "scripts" / "build-llama-server.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building llama-server failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])
