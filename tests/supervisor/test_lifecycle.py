"""Supervisor core against the FAKE llama-server: everything a real one cannot do on demand."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from llmctl import paths
from llmctl.errors import EXIT_LOCKED, LockTimeout
from llmctl.supervisor.health import health_status
from llmctl.supervisor.launch import LaunchSpec
from llmctl.supervisor.lifecycle import Supervisor, procs
from llmctl.supervisor.lock import StateLock
from llmctl.supervisor.results import Event, SwitchResult
from llmctl.supervisor.state import LaunchRecord, read_state, write_state
from supervisor_helpers import FAKE, fake_pids, fake_spec, kill_fakes, wait_until


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor(paths.state_dir(), lock_timeout=30, port_timeout=5, gpu_timeout=2)
    try:
        yield s
    finally:
        try:
            s.stop()
        finally:
            kill_fakes()


def events_of(events: list[Event]) -> list[str]:
    return [e.kind for e in events if e.kind != "log"]


def test_switch_starts_detached_and_records_state(sup: Supervisor, free_port: int) -> None:
    events: list[Event] = []
    spec = fake_spec(free_port, "alpha")
    res = sup.switch(spec, on_event=events.append)
    assert res.ready and res.error is None and not res.noop
    assert res.pid is not None and procs.is_alive(res.pid)
    assert health_status(res.url) == 200
    assert events_of(events) == ["locked", "starting", "ready"]
    assert any("model loaded" in e.message for e in events if e.kind == "log")

    rec = read_state(sup.state_dir)
    assert rec is not None and rec.phase == "ready"
    assert rec.pid == res.pid
    assert rec.start_time == procs.start_time(res.pid)
    assert rec.profile == "alpha" and rec.config_hash == spec.config_hash
    assert rec.argv == list(spec.argv) and rec.port == free_port and rec.host == "127.0.0.1"
    assert rec.log == res.log and Path(rec.log).is_file()
    assert abs(rec.started_at - time.time()) < 30

    st = procs.stat(res.pid)
    assert st is not None
    # own session and process group: Ctrl-C in the terminal of llmctl does not reach it
    assert st.session == res.pid and st.pgrp == res.pid
    assert os.environ["LLMCTL_TEST_SESSION"]  # inherited, so the session check sees it

    status = sup.status()
    assert status.running and status.healthy and status.phase == "ready"
    assert status.profile == "alpha" and status.pid == res.pid and status.url == spec.url
    assert status.uptime_s is not None and status.uptime_s >= 0
    assert status.memory["total_mib"] == pytest.approx(4.25)
    assert status.memory["kv_mib"] == pytest.approx(2.0)

    stop_events: list[Event] = []
    out = sup.stop(on_event=stop_events.append)
    assert out.stopped and out.profile == "alpha" and out.pid == res.pid
    assert events_of(stop_events) == ["locked", "stopping", "stopped"]
    assert not procs.is_alive(res.pid)
    assert not procs.port_in_use("127.0.0.1", free_port)
    assert read_state(sup.state_dir) is None
    assert not sup.status().running
    # stopping again is a no-op
    again = sup.stop()
    assert not again.stopped and again.pid is None


def test_same_config_is_noop_and_other_profile_replaces(sup: Supervisor, free_port: int) -> None:
    first = sup.switch(fake_spec(free_port, "alpha"))
    events: list[Event] = []
    same = sup.switch(fake_spec(free_port, "alpha"), on_event=events.append)
    assert same.noop and same.ready and same.pid == first.pid
    assert events_of(events) == ["locked", "ready"]
    assert "nothing to do" in events[-1].message

    # same profile, different config: restarted
    changed = sup.switch(fake_spec(free_port, "alpha", "ok", "--load-time", "0.01"))
    assert changed.ready and not changed.noop and changed.pid != first.pid
    assert first.pid is not None and not procs.is_alive(first.pid)

    events.clear()
    other = sup.switch(fake_spec(free_port, "beta"), on_event=events.append)
    assert other.ready and other.pid != changed.pid
    assert events_of(events) == ["locked", "stopping", "stopped", "starting", "ready"]
    assert changed.pid is not None and not procs.is_alive(changed.pid)
    assert fake_pids() == [other.pid]
    rec = read_state(sup.state_dir)
    assert rec is not None and rec.profile == "beta"


def test_unhealthy_same_config_is_restarted(sup: Supervisor, free_port: int) -> None:
    first = sup.switch(fake_spec(free_port, "alpha"))
    assert first.pid is not None
    os.kill(first.pid, signal.SIGSTOP)  # alive but not answering
    try:
        again = sup.switch(fake_spec(free_port, "alpha", stop_timeout=0.5))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.pid, signal.SIGCONT)
    assert again.ready and not again.noop and again.pid != first.pid


def test_exit_during_load_fails_at_once_with_error_line_first(
    sup: Supervisor, free_port: int
) -> None:
    events: list[Event] = []
    spec = fake_spec(
        free_port,
        "broken",
        "die",
        "--message",
        "llama_model_load: error loading model: tensor 'blk.0.ffn' has wrong shape",
        "--exit-code",
        "3",
        ready_timeout=120,
    )
    res = sup.switch(spec, on_event=events.append)
    assert not res.ready and res.error is not None
    assert res.elapsed_s < 10  # not the ready timeout
    err = res.error
    assert err.exit_status == 3
    assert "exited with code 3" in err.message
    assert "tensor 'blk.0.ffn' has wrong shape" in err.message
    assert "error loading model" in err.stderr_tail[0]
    assert any("exiting due to model loading error" in x for x in err.stderr_tail)
    assert events_of(events)[-1] == "error"
    assert read_state(sup.state_dir) is None
    assert fake_pids() == []
    js = res.to_json()
    assert set(js) == {"profile", "pid", "port", "url", "ready", "elapsed_s", "log", "error"}
    assert set(js["error"]) == {"message", "exit_code", "stderr_tail"}
    assert js["error"]["exit_code"] == 3 and js["ready"] is False
    # the log of the failed launch stays for `llmctl logs`
    assert sup.log_path() == Path(res.log or "")


def test_stall_is_killed_and_reported(sup: Supervisor, free_port: int) -> None:
    res = sup.switch(fake_spec(free_port, "stuck", "hang", stall_timeout=0.5, ready_timeout=60))
    assert not res.ready and res.error is not None
    assert "stalled" in res.error.message and "0.5 s" in res.error.message
    assert res.elapsed_s < 10
    assert fake_pids() == []
    assert read_state(sup.state_dir) is None
    assert not procs.port_in_use("127.0.0.1", free_port)


def test_ready_timeout_is_killed_and_reported(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(
        free_port, "slow", "ok", "--load-time", "30", "--progress-every", "0.05", ready_timeout=1.0
    )
    res = sup.switch(spec)
    assert not res.ready and res.error is not None
    assert "not ready after 1 s" in res.error.message
    assert any("loading ..." in line for line in res.error.stderr_tail)
    assert 0.9 < res.elapsed_s < 10
    assert fake_pids() == []


def test_progress_without_newlines_is_not_a_stall(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(
        free_port,
        "dots",
        "dots",
        "--load-time",
        "1.5",
        "--progress-every",
        "0.05",
        stall_timeout=0.6,
    )
    res = sup.switch(spec)
    assert res.ready, res.error


def test_slow_load_streams_progress_lines(sup: Supervisor, free_port: int) -> None:
    seen: list[tuple[float, str]] = []
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "0.6", "--progress-every", "0.1")
    res = sup.switch(spec, on_event=lambda e: seen.append((e.elapsed_s, e.message)))
    assert res.ready
    progress = [t for t, msg in seen if "loading ..." in msg]
    assert len(progress) >= 4
    # lines arrive as they are written, not all at the end
    assert progress[-1] - progress[0] > 0.3


def test_stop_escalates_to_sigkill(sup: Supervisor, free_port: int) -> None:
    res = sup.switch(fake_spec(free_port, "stubborn", "ignore-term", stop_timeout=0.4))
    assert res.ready and res.pid is not None
    events: list[Event] = []
    t0 = time.monotonic()
    out = sup.stop(on_event=events.append)
    assert out.stopped
    assert time.monotonic() - t0 >= 0.4
    assert not procs.is_alive(res.pid)
    assert "killed" in next(e for e in events if e.kind == "stopped").message
    assert not procs.port_in_use("127.0.0.1", free_port)


def test_leader_exits_and_child_keeps_port(sup: Supervisor, free_port: int, tmp_path: Path) -> None:
    go = tmp_path / "exit-now"  # the leader leaves once the switch has seen it ready
    res = sup.switch(fake_spec(free_port, "forky", "port-exit", "--exit-file", str(go)))
    assert res.ready and res.pid is not None
    go.touch()
    leader = res.pid
    assert wait_until(lambda: not procs.is_alive(leader))
    # the port is still held by the leader's child, in the same session
    assert procs.port_in_use("127.0.0.1", free_port)
    status = sup.status()
    assert not status.running
    assert status.note is not None and "stopped processes left by" in status.note
    assert wait_until(lambda: not procs.port_in_use("127.0.0.1", free_port), 5)
    assert fake_pids() == []


def test_exit_right_after_ready_is_noticed(sup: Supervisor, free_port: int, tmp_path: Path) -> None:
    go = tmp_path / "exit-now"  # it exits once the switch has seen it ready
    spec = fake_spec(free_port, "brief", "exit-after-ready", "--exit-file", str(go))
    res = sup.switch(spec)
    assert res.ready and res.pid is not None
    go.touch()
    pid = res.pid
    assert wait_until(lambda: not procs.is_alive(pid))
    status = sup.status()
    assert not status.running and status.note is not None and "had exited" in status.note
    assert read_state(sup.state_dir) is None
    # switching to the same config starts it again rather than calling it a no-op
    again = sup.switch(fake_spec(free_port, "brief"))
    assert again.ready and not again.noop and again.pid != pid


def test_port_taken_by_another_program_is_named(
    sup: Supervisor, free_port: int, tmp_path: Path
) -> None:
    squatter = tmp_path / "port-squatter.py"
    squatter.write_text(
        "import socket,sys,time\n"
        "s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('ok', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, str(squatter), str(free_port)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ok\n"
        res = sup.switch(fake_spec(free_port, "alpha"))
        assert not res.ready and res.error is not None
        assert f"port {free_port}" in res.error.message
        assert f"pid {holder.pid}" in res.error.message and "port-squatter" in res.error.message
        assert res.log is None and res.pid is None
        assert fake_pids() == []
        assert read_state(sup.state_dir) is None
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_missing_binary(sup: Supervisor, free_port: int, tmp_path: Path) -> None:

    spec = LaunchSpec(
        profile="ghost", argv=(str(tmp_path / "no-such-llama-server"),), port=free_port
    )
    res = sup.switch(spec)
    assert not res.ready and res.error is not None
    assert "cannot run" in res.error.message and "no-such-llama-server" in res.error.message
    assert res.error.hint and "LLMCTL_LLAMA_SERVER" in res.error.hint
    assert read_state(sup.state_dir) is None


def test_cancel_during_load_leaves_nothing(sup: Supervisor, free_port: int) -> None:
    cancel = threading.Event()
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "30", "--progress-every", "0.05")
    started = threading.Event()

    def on_event(e: Event) -> None:
        if e.kind == "log":
            started.set()

    timer = threading.Thread(target=lambda: (started.wait(10), time.sleep(0.2), cancel.set()))
    timer.start()
    res = sup.switch(spec, on_event=on_event, cancel=cancel)
    timer.join()
    assert not res.ready and res.error is not None and "cancelled" in res.error.message
    assert res.elapsed_s < 10
    assert fake_pids() == []
    assert read_state(sup.state_dir) is None
    assert not procs.port_in_use("127.0.0.1", free_port)


def test_cancel_before_start_changes_nothing(sup: Supervisor, free_port: int) -> None:
    first = sup.switch(fake_spec(free_port, "alpha"))
    cancel = threading.Event()
    cancel.set()
    res = sup.switch(fake_spec(free_port, "beta"), cancel=cancel)
    assert res.error is not None and "cancelled" in res.error.message
    assert sup.status().profile == "alpha" and first.pid in fake_pids()


def test_keyboard_interrupt_during_load_leaves_nothing(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "30", "--progress-every", "0.05")

    def on_event(e: Event) -> None:
        if e.kind == "log" and "loading ..." in e.message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sup.switch(spec, on_event=on_event)
    assert fake_pids() == []
    assert read_state(sup.state_dir) is None


def test_reused_pid_is_never_taken_for_ours(sup: Supervisor, free_port: int) -> None:
    # A stranger in its own session: pid == session id, as a llama-server of ours would be.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        real_start = procs.start_time(stranger.pid)
        assert real_start is not None
        rec = LaunchRecord(
            launch_id=uuid.uuid4().hex,
            phase="ready",
            profile="old",
            config_hash="x",
            argv=["llama-server"],
            host="127.0.0.1",
            port=free_port,
            url=f"http://127.0.0.1:{free_port}",
            log="/nonexistent.log",
            started_at=time.time() - 100,
            pid=stranger.pid,
            start_time=real_start - 1,  # the pid was reused by the stranger
        )
        write_state(sup.state_dir, rec)
        status = sup.status()
        assert not status.running
        assert status.note is not None and "had exited" in status.note
        assert read_state(sup.state_dir) is None
        write_state(sup.state_dir, rec)
        assert not sup.stop().stopped
        write_state(sup.state_dir, rec)
        assert sup.switch(fake_spec(free_port, "new")).ready
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_orphan_of_a_killed_switch_is_found_by_its_launch_id(
    sup: Supervisor, free_port: int
) -> None:
    # llmctl died between the spawn and recording the pid: only the launch id is known.
    launch_id = uuid.uuid4().hex
    env = dict(os.environ, LLMCTL_LAUNCH_ID=launch_id)
    orphan = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(free_port), "--mode", "hang"],
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        dead_owner = subprocess.Popen(["true"])
        dead_owner.wait()
        rec = LaunchRecord(
            launch_id=launch_id,
            phase="starting",
            profile="half",
            config_hash="x",
            argv=[],
            host="127.0.0.1",
            port=free_port,
            url=f"http://127.0.0.1:{free_port}",
            log="/nonexistent.log",
            started_at=time.time(),
            owner_pid=dead_owner.pid,
            owner_start_time=1,
            stop_timeout=2,
        )
        write_state(sup.state_dir, rec)
        status = sup.status()
        assert not status.running
        assert status.note is not None and "interrupted switch" in status.note
        assert orphan.wait(5) is not None
        assert read_state(sup.state_dir) is None
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()


SWITCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from supervisor_helpers import fake_spec
    from llmctl.supervisor.lifecycle import Supervisor
    sup = Supervisor(Path(sys.argv[1]), lock_timeout=60)
    spec = fake_spec(int(sys.argv[2]), sys.argv[3], "ok", *sys.argv[4:])
    res = sup.switch(spec, on_event=lambda e: print(e.kind, flush=True))
    print(json.dumps(res.to_json()), flush=True)
    """
).format(tests=str(Path(__file__).resolve().parents[1]))


def test_sigkill_of_llmctl_mid_switch_is_repaired(sup: Supervisor, free_port: int) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SWITCH_SCRIPT,
            str(sup.state_dir),
            str(free_port),
            "slow",
            "--load-time",
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "log":
                break
        rec = read_state(sup.state_dir)
        assert rec is not None and rec.phase == "starting" and rec.pid is not None
        server = rec.pid
        assert procs.is_alive(server)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the server outlives the killed llmctl (detached) ...
        assert procs.is_alive(server)
        status = sup.status()
        # ... and the next command notices the abandoned switch and cleans up
        assert not status.running
        assert status.note is not None and "interrupted switch" in status.note
        assert not procs.is_alive(server)
        assert read_state(sup.state_dir) is None
        assert sup.switch(fake_spec(free_port, "next")).ready
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_concurrent_switches_end_with_one_healthy_server(sup: Supervisor) -> None:
    ports = []
    socks = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        socks.append(s)
    for s in socks:
        s.close()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", SWITCH_SCRIPT, str(sup.state_dir), str(port), f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, port in enumerate(ports)
    ]
    results = []
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ready"] for r in results)
    alive = fake_pids()
    assert len(alive) == 1
    rec = read_state(sup.state_dir)
    assert rec is not None and rec.pid == alive[0] and rec.phase == "ready"
    assert health_status(rec.url) == 200
    # the one left is the last one to get the lock; every other one was stopped
    assert rec.profile in {r["profile"] for r in results}
    status = sup.status()
    assert status.running and status.healthy and status.profile == rec.profile


def test_concurrent_switches_from_threads(sup: Supervisor) -> None:
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    results = []
    lock = threading.Lock()

    def run(i: int) -> None:
        res = sup.switch(fake_spec(ports[i], f"t{i}"))
        with lock:
            results.append(res)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(r.ready for r in results)
    alive = fake_pids()
    assert len(alive) == 1
    status = sup.status()
    assert status.running and status.healthy and status.pid == alive[0]


def test_lock_timeout(sup: Supervisor, free_port: int) -> None:
    impatient = Supervisor(sup.state_dir, lock_timeout=0.2)
    with StateLock(sup.state_dir, 5, purpose="llmctl switch big-model"):
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            impatient.switch(fake_spec(free_port, "alpha"))
        assert 0.15 < time.monotonic() - t0 < 3
        with pytest.raises(LockTimeout):
            impatient.stop()
    err = info.value
    assert err.exit_code == EXIT_LOCKED == 3
    assert f"pid {os.getpid()}" in err.message and "switch big-model" in err.message
    assert err.hint and "--lock-timeout" in err.hint
    assert fake_pids() == []
    # status never waits for the lock
    with StateLock(sup.state_dir, 5):
        assert not sup.status().running


def test_status_reports_a_switch_in_progress(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "1.0", "--progress-every", "0.05")
    seen_starting = []

    def on_event(e: Event) -> None:
        if e.kind == "log" and not seen_starting:
            seen_starting.append(sup.status())

    res = sup.switch(spec, on_event=on_event)
    assert res.ready
    during = seen_starting[0]
    assert during.running and during.phase == "starting" and during.healthy is False
    assert during.profile == "slow"


def test_corrupt_state_is_set_aside(sup: Supervisor) -> None:
    sup.state_dir.mkdir(parents=True, exist_ok=True)
    (sup.state_dir / "state.json").write_text("{not json")
    status = sup.status()
    assert not status.running and status.note and "not a valid llmctl state file" in status.note
    assert (sup.state_dir / "state.json.corrupt").exists()
    assert not (sup.state_dir / "state.json").exists()


def test_logs_are_rotated(free_port: int) -> None:
    sup = Supervisor(paths.state_dir(), keep_logs=3)
    for i in range(5):
        res = sup.switch(fake_spec(free_port, f"d{i}", "die", "--load-time", "0"))
        assert res.error is not None
    logs = sorted((sup.state_dir / "logs").glob("*.log"))
    assert len(logs) == 3
    assert [p.name.split("-")[-1] for p in logs] == ["d2.log", "d3.log", "d4.log"]
    header = logs[-1].read_text().splitlines()[:2]
    assert header[0].startswith("# llmctl: profile=d4") and "--mode die" in header[1]


def test_gpu_memory_release_is_awaited(
    sup: Supervisor, free_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in nvidia-smi that keeps listing the stopped pid for three more queries.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    counter = tmp_path / "calls"
    pidfile = tmp_path / "pid"
    script = bindir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        f"if [ $n -le 3 ]; then cat {pidfile}; fi\n"
    )
    script.chmod(0o755)
    res = sup.switch(fake_spec(free_port, "gpu"))
    assert res.pid is not None
    pidfile.write_text(f"{res.pid}\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    events: list[Event] = []
    sup.stop(on_event=events.append)
    assert int(counter.read_text()) == 4
    assert "GPU" not in events[-1].message

    # never released: bounded, and said
    counter.write_text("-1000\n")
    res = sup.switch(fake_spec(free_port, "gpu"))
    pidfile.write_text(f"{res.pid}\n")
    events.clear()
    t0 = time.monotonic()
    sup.stop(on_event=events.append)
    assert time.monotonic() - t0 < 10
    assert "GPU memory not released after 2 s" in events[-1].message


@contextlib.contextmanager
def loading_elsewhere(state_dir: Path, spec: LaunchSpec) -> Iterator[Future[SwitchResult]]:
    """A switch by another Supervisor in a thread; yields once its load prints progress."""
    loading = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            Supervisor(state_dir).switch,
            spec,
            on_event=lambda e: loading.set() if e.kind == "log" else None,
        )
        assert loading.wait(20)
        yield pending


def test_stop_cancels_a_load_in_progress_elsewhere(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "60", "--progress-every", "0.05")
    with loading_elsewhere(sup.state_dir, spec) as pending:
        events: list[Event] = []
        t0 = time.monotonic()
        out = sup.stop(on_event=events.append)
        assert time.monotonic() - t0 < 15  # not the 60 s load
        assert "cancelling the load of profile 'slow'" in events[0].message
        assert not out.stopped  # the load ended itself; nothing was left to stop
    res = pending.result(60)
    assert not res.ready and res.error is not None
    assert "cancelled by `llmctl stop`" in res.error.message
    assert fake_pids() == []
    assert read_state(sup.state_dir) is None
    assert not list(sup.state_dir.glob("cancel-*"))


def test_status_of_a_dead_server_while_another_llmctl_holds_the_lock(
    sup: Supervisor, free_port: int
) -> None:
    res = sup.switch(fake_spec(free_port, "alpha"))
    assert res.pid is not None
    os.kill(res.pid, signal.SIGKILL)
    pid = res.pid
    assert wait_until(lambda: not procs.is_alive(pid))
    with StateLock(sup.state_dir, 5):
        status = sup.status()
        assert not status.running
        assert status.note is not None and "will repair the state" in status.note
        assert read_state(sup.state_dir) is not None  # left for the lock holder
        (sup.state_dir / "state.json").write_text("garbage")
        status = sup.status()
        assert not status.running and status.note and "unreadable" in status.note
    status = sup.status()
    assert not status.running and status.note and "not a valid llmctl state file" in status.note


def test_health_probe(free_port: int) -> None:
    from llmctl.supervisor.health import _host_port

    assert _host_port("http://127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert _host_port("http://[::1]:9000/v1") == ("::1", 9000)
    assert _host_port("http://localhost") == ("localhost", 80)
    assert health_status(f"http://127.0.0.1:{free_port}") is None  # nothing listens
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(free_port), "--mode", "hang"],
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: health_status(f"http://127.0.0.1:{free_port}") == 503)
        assert health_status(f"http://localhost:{free_port}") == 503
    finally:
        proc.kill()
        proc.wait()


def test_stop_can_wait_for_a_load_in_progress(sup: Supervisor, free_port: int) -> None:
    spec = fake_spec(free_port, "slow", "ok", "--load-time", "1.0", "--progress-every", "0.05")
    with loading_elsewhere(sup.state_dir, spec) as pending:
        out = sup.stop(cancel_loading=False)
    res = pending.result(60)
    assert res.ready  # the load finished ...
    assert out.stopped and out.pid == res.pid  # ... and was then stopped
    assert fake_pids() == []


def test_mmap_and_mlock_are_spelled_as_the_build_spells_them() -> None:
    """2026 builds take --load-mode; older ones (b9093) --no-mmap / --mlock, read from --help."""
    from llmctl.manifest.model import Profile
    from llmctl.supervisor.launch import profile_args

    p = Profile.model_validate({"model": "m.gguf", "mmap": False, "mlock": True})
    new = frozenset({"--load-mode", "--no-mmap", "--mlock", "-m"})
    old = frozenset({"--no-mmap", "--mlock", "--mmap", "-m"})
    assert "--load-mode" in profile_args("p", p, "127.0.0.1", 1, new)
    args = profile_args("p", p, "127.0.0.1", 1, old)
    assert "--load-mode" not in args and "--no-mmap" in args and "--mlock" in args
    assert "--load-mode" in profile_args("p", p, "127.0.0.1", 1, None)  # --help unknown
    keep = Profile.model_validate({"model": "m.gguf", "mmap": True})
    assert "--no-mmap" not in profile_args("p", keep, "127.0.0.1", 1, old)
