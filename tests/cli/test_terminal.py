"""The everyday commands in a pseudo-terminal, where their output is the point: what a person sees
of `llmctl load` and `switch` (a live view that ends with the final line and leaves nothing
behind), `ps`'s columns with long profile names, and `command` as the exact launch."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.state import read_servers
from processes import free_port_range, llmctl
from supervisor_helpers import FAKE, kill_fakes
from terminal import COLUMNS, Screen, run_in_pty

LONG_A = "qwen2.5-coder-1.5b-instruct-q4_k_m"  # as long as the names init writes
LONG_B = "tiny-b"
SPINNER = re.compile("[\u2800-\u28ff]")  # rich's "dots" spinner: braille characters
READY = re.compile(r"ready: profile '([^']+)' at http://127\.0\.0\.1:\d+ \(pid \d+\).* in [\d.]+ s")


def test_screen_replays_what_a_live_view_writes() -> None:
    screen = Screen(columns=40)
    screen.feed(b"\x1b[?25l\xe2\xa0\x8b \x1b[1mload\x1b[0m 0.1s\r\n  log line\r\n")
    screen.feed(b"\r\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2Kready: it\r\n\x1b[?25h")
    assert screen.lines() == ["ready: it"] and not screen.unknown
    screen.feed(b"x" * 45)  # wraps at 40
    assert screen.lines()[-2:] == ["x" * 40, "x" * 5]


def _real_manifest(tmp_path: Path, binary: Path, *, keep_kv: bool = False) -> Path:
    from llmctl.testing.testmodels import write_tiny_model

    a = write_tiny_model(tmp_path / "a.gguf", arch="llama")
    b = write_tiny_model(tmp_path / "b.gguf", arch="llama", seed=7)
    base = free_port_range(3)
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\n"
        f'server:\n  binary: {binary}\n  ports: "{base}-{base + 2}"\n  ready_timeout: 60s\n'
        "profiles:\n"
        f"  {LONG_A}:\n    model: {a}\n    ctx_size: 512\n    parallel: 1\n"
        + ("    keep_kv: 64MiB\n" if keep_kv else "")
        + f"  {LONG_B}:\n    model: {b}\n    ctx_size: 512\n    parallel: 1\n"
    )
    return path


@pytest.fixture
def real(tmp_path: Path, llama_server_bin: Path) -> Iterator[Path]:
    path = _real_manifest(tmp_path, llama_server_bin, keep_kv=True)
    try:
        yield path
    finally:
        Supervisor(paths.state_dir(), lock_timeout=30).stop()


def _no_leftovers(lines: list[str]) -> None:
    for line in lines:
        assert not SPINNER.search(line), lines
        assert "llama_" not in line and "load_tensors" not in line, lines  # the view's log tail


def test_load_in_a_terminal_shows_a_live_view_that_ends_with_the_final_lines(real: Path) -> None:
    res = run_in_pty(["load", LONG_A, LONG_B, "--manifest", str(real)])
    assert res.returncode == 0, res.raw
    # the view was live (a spinner, lines redrawn in place) ...
    assert SPINNER.search(res.raw.decode(errors="replace")) and b"\x1b[2K" in res.raw
    # (which steps get painted depends on the machine's speed: a 40 ms load may show only the
    # lock; the profile's name is on the first frame)
    assert f"{LONG_A}".encode() in res.raw
    # ... and what stays on the screen is one ready line per profile, nothing else
    lines = res.lines
    assert [READY.fullmatch(line) is not None for line in lines] == [True, True], lines
    assert [READY.fullmatch(x).group(1) for x in lines] == [LONG_A, LONG_B]  # type: ignore[union-attr]
    _no_leftovers(lines)
    # not a terminal: plain lines, one per step, on stderr; the result on stdout
    assert llmctl("unload", LONG_B, "--manifest", str(real)).returncode == 0
    piped = llmctl("load", LONG_B, "--manifest", str(real))
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr + piped.stdout
    assert re.search(r"^\[ *[\d.]+s\] starting profile 'tiny-b'", piped.stderr, re.M), piped.stderr
    assert READY.fullmatch(piped.stdout.strip()), piped.stdout


def test_switch_in_a_terminal_ends_with_the_ready_line(real: Path) -> None:
    res = run_in_pty(["switch", LONG_B, "--manifest", str(real)])
    assert res.returncode == 0, res.raw
    assert SPINNER.search(res.raw.decode(errors="replace"))
    assert len(res.lines) == 1 and READY.fullmatch(res.lines[0]), res.lines
    again = run_in_pty(["switch", LONG_A, "--manifest", str(real)])
    assert again.returncode == 0, again.raw
    lines = again.lines
    _no_leftovers(lines)
    assert READY.fullmatch(lines[-1]) and LONG_A in lines[-1], lines
    # what stays above it: the stop of the server it replaced, each step on its own line
    assert all("stopp" in line for line in lines[:-1]) and lines[:-1], lines


def test_command_is_the_argv_of_the_real_launch(real: Path) -> None:
    """`llmctl command` of a keep_kv profile: the --slot-save-path and --log-jsonl the launch adds
    are in it; it is what /proc/PID/cmdline of the llama-server `switch` started says."""
    printed = llmctl("command", LONG_A, "--manifest", str(real))
    as_json = llmctl("command", LONG_A, "--json", "--manifest", str(real))
    assert printed.returncode == as_json.returncode == 0, printed.stderr
    argv = json.loads(as_json.stdout)["argv"]
    assert shlex.split(printed.stdout) == argv
    assert "--slot-save-path" in argv and "--log-jsonl" in argv
    assert llmctl("switch", LONG_A, "--manifest", str(real)).returncode == 0
    rec = read_servers(paths.state_dir())[LONG_A]
    assert rec.pid is not None
    cmdline = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in cmdline] == argv
    # a profile without keep_kv: no --slot-save-path
    other = json.loads(llmctl("command", LONG_B, "--json", "--manifest", str(real)).stdout)
    assert "--slot-save-path" not in other["argv"]


# --- `llmctl ps` with long names (the FAKE llama-server: only the table matters) --------------


@pytest.fixture
def fake_manifest(tmp_path: Path) -> Iterator[Path]:
    base = free_port_range(3)
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\n"
        f'server:\n  binary: {json.dumps(str(FAKE))}\n  ports: "{base}-{base + 2}"\n'
        "  stop_timeout: 2\n"
        "profiles:\n"
        f"  {LONG_A}-with-a-suffix: {{model: m.gguf, ctx_size: 1024}}\n"
        "  b: {model: m.gguf, ctx_size: 1024}\n"
    )
    try:
        yield path
    finally:
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
        kill_fakes()


def test_ps_columns_line_up_with_long_names(fake_manifest: Path) -> None:
    long_name = f"{LONG_A}-with-a-suffix"
    assert llmctl("load", long_name, "b", "--manifest", str(fake_manifest)).returncode == 0
    res = run_in_pty(["ps"])
    assert res.returncode == 0, res.raw
    header, *rows = res.lines
    assert header.split()[:6] == ["PROFILE", "PHASE", "HEALTH", "PID", "URL", "UPTIME"]
    assert len(rows) == 2 and all(len(line) <= COLUMNS for line in res.lines)
    for row in rows:
        name, phase, health, pid, url, rest = row.split(None, 5)
        assert name in (long_name, "b"), row  # whole, not cut
        assert (phase, health) == ("ready", "ok") and pid.isdigit(), row
        assert url.startswith("http://127.0.0.1:") and re.match(r"\d+ s  ", rest), row
        # left-aligned columns start under their header, right-aligned ones end under it
        for word, cell in (("PHASE", phase), ("HEALTH", health), ("URL", url)):
            assert row.index(cell, len(name)) == header.index(word), (word, row)
        assert row.index(pid, len(name)) + len(pid) == header.index("PID") + 3, row
        uptime = rest.split("  ")[0]
        assert row.index(uptime, row.index(url) + len(url)) + len(uptime) == (
            header.index("UPTIME") + len("UPTIME")
        ), row


def test_a_failed_load_in_a_terminal_ends_with_the_error_and_no_view(
    tmp_path: Path, llama_server_bin: Path
) -> None:
    from dashboard_helpers import write_models

    _a, _b, broken = write_models(tmp_path)
    path = tmp_path / "broken.yaml"
    path.write_text(
        f"version: 1\nserver:\n  binary: {llama_server_bin}\n  ready_timeout: 60s\n"
        f"profiles:\n  broken-model-with-a-long-name:\n    model: {broken}\n    ctx_size: 512\n"
    )
    try:
        res = run_in_pty(["load", "broken-model-with-a-long-name", "--manifest", str(path)])
    finally:
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
    assert res.returncode == 1, res.raw
    assert SPINNER.search(res.raw.decode(errors="replace"))  # it was live while loading
    lines = res.lines
    # the screen starts with the error: nothing of the view (spinner, steps, log tail) is left
    assert lines[0].startswith("error: ") and "broken-model-with-a-long-name" in lines[0], lines
    assert not any(SPINNER.search(line) or "starting profile" in line for line in lines), lines
    # llama-server's own error line first, then the tail of its log, then where the log is
    said = lines.index("llama-server said (error line first):")  # after the wrapped message
    assert "error loading model" in lines[said + 1], lines
    assert any(line.startswith("hint: full log: ") for line in lines[said:]), lines
