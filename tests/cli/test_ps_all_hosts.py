"""`llmctl ps --all-hosts` against routers that are not there or not llmctl (a FAKE host stands in
for a router that answers): a clear error and exit status 1, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.fake_host import FakeHost
from fakes.fake_upstream import free_port


def ps_all_hosts(tmp_path: Path, router: str, *args: str) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "profiles.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha:\n    model: /models/alpha.gguf\n")
    argv = [sys.executable, "-m", "llmctl", "ps", "--all-hosts", "--manifest", str(manifest)]
    return subprocess.run(
        [*argv, "--router", router, *args], capture_output=True, text=True, timeout=60
    )


def test_no_router_there(tmp_path: Path) -> None:
    out = ps_all_hosts(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "cannot reach llmctl serve at http://127.0.0.1:" in out.stderr
    assert "--router" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("mode", "key", "why"),
    [
        ("garbage", None, "did not answer llmctl state"),
        ("ok", "needed", "refused the key"),
    ],
)
def test_a_router_that_answers_wrong(tmp_path: Path, mode: str, key: str | None, why: str) -> None:
    with FakeHost("router", state_mode=mode, key=key) as fake:
        out = ps_all_hosts(tmp_path, fake.url, "--json")
    assert out.returncode == 1
    error = json.loads(out.stdout)["error"]
    assert why in error["message"] and error["hint"]


def test_a_router_with_hosts(tmp_path: Path) -> None:
    with FakeHost("router", profiles=("alpha", "beta")) as fake:
        out = ps_all_hosts(tmp_path, fake.url)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[1:] == [
        ["local", "up", "alpha", "idle", "yes", "0"],
        ["local", "up", "beta", "idle", "yes", "0"],
    ]


def test_names_a_host_supplies_are_printed_escaped(tmp_path: Path) -> None:
    """A terminal escape in a name from a host (here: set the window title, then a bidi override)
    reaches the terminal as visible text, never as the escape itself."""
    evil = "ev\x1b]0;pwned\x07il\u202e\x9b31m"
    with FakeHost("router", profiles=(evil,)) as fake:
        out = ps_all_hosts(tmp_path, fake.url)
    assert out.returncode == 0, out.stderr
    for ch in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert ch not in out.stdout and ch not in out.stderr
    assert "ev\\x1b]0;pwned\\x07il\\u202e\\x9b31m" in out.stdout
