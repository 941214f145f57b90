"""The fault-injection suite: one real `llmctl serve`, REAL llama-servers on tiny models, and a
fault after another while clients keep sending requests. Prints a table: faults tried, requests
sent, answered, lost (must be zero), orphans (must be zero).

`make faults` runs it alone; `make test` (CI) runs it with the rest. A request is *lost* when it
gets no HTTP answer, a truncated one, or a 500: a clean refusal (JSON error with its status, or an
SSE error event once a stream started) is an answer. An *orphan* is a llama-server of this state
folder that the state file does not name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from llmctl import paths
from llmctl.supervisor.lifecycle import Supervisor
from llmctl.supervisor.state import read_state
from processes import llmctl
from serving import Served, llama_pids, start_serve, stop_serve, write_manifest

pytestmark = pytest.mark.faults

CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@dataclass
class Row:
    fault: str
    sent: int = 0
    ok: int = 0
    refused: int = 0
    lost: int = 0
    orphans: int = 0
    notes: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)  # the refusals' error codes


class Tally:
    """Requests and what became of them, for one fault."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self._lock = threading.Lock()

    def count(self, outcome: str, note: str = "") -> None:
        with self._lock:
            self.row.sent += 1
            if outcome == "ok":
                self.row.ok += 1
            elif outcome == "refused":
                self.row.refused += 1
            else:
                self.row.lost += 1
            if outcome != "ok" and note and len(self.row.notes) < 3:
                self.row.notes.append(note[:300])

    def judge(self, r: httpx.Response, ok: tuple[int, ...] = (200,)) -> None:
        if r.status_code in ok:
            self.count("ok")
        elif r.status_code != 500 and _clean_error(r):
            self.count("refused", f"{r.status_code} {r.text}")
            code = _code(r)
            with self._lock:
                self.row.codes[code] = self.row.codes.get(code, 0) + 1
        else:
            self.count("lost", f"{r.status_code} {r.text}")

    def send(self, call: Callable[[], httpx.Response], ok: tuple[int, ...] = (200,)) -> None:
        try:
            self.judge(call(), ok)
        except httpx.HTTPError as exc:
            self.count("lost", f"{type(exc).__name__}: {exc}")


def _clean_error(r: httpx.Response) -> bool:
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return '"error"' in r.text or "data: [DONE]" in r.text
    try:
        return isinstance(r.json().get("error"), dict)
    except ValueError:
        return False


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"].get("code"))
    except (ValueError, KeyError, AttributeError, TypeError):
        return "?"


def _stream_ok(r: httpx.Response) -> bool:
    return r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def orphans(binary: Path) -> int:
    """llama-servers of this state folder that the state file does not name."""
    try:
        rec = read_state(paths.state_dir())
    except Exception:
        rec = None
    known = {rec.pid} if rec is not None else set()
    return len([p for p in llama_pids(binary) if p not in known])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from llmctl.testing.testmodels import write_tiny_model

    folder = tmp_path_factory.mktemp("models")
    return (
        write_tiny_model(folder / "tiny-a.gguf", arch="llama"),
        write_tiny_model(folder / "tiny-b.gguf", arch="llama", seed=7),
        write_tiny_model(folder / "tiny-long.gguf", arch="llama", n_ctx_train=32768),
    )


@contextlib.contextmanager
def traffic(served: Served, tally: Tally, *, streams: bool = False) -> Iterator[None]:
    """Three clients sending requests for tiny-a (one streaming) until the block ends."""
    done = threading.Event()

    def plain() -> None:
        while not done.is_set():
            tally.send(
                lambda: httpx.post(
                    served.url + "/v1/chat/completions", json={**CHAT, "model": "A"}, timeout=120
                )
            )

    def streaming() -> None:
        while not done.is_set():
            try:
                r = httpx.post(
                    served.url + "/v1/chat/completions",
                    json={**CHAT, "model": "A", "stream": True},
                    timeout=120,
                )
            except httpx.HTTPError as exc:
                tally.count("lost", f"stream: {exc}")
                continue
            if _stream_ok(r):
                tally.count("ok")
            else:
                tally.judge(r)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(plain), pool.submit(plain)]
        workers.append(pool.submit(streaming if streams else plain))
        try:
            yield
        finally:
            done.set()
            for w in workers:
                w.result()


def test_fault_suite(
    tmp_path: Path,
    llama_server_bin: Path,
    tiny_models: tuple[Path, Path, Path],
    free_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fakes.fake_upstream import free_port as another_port

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    cut = tmp_path / "cut-short.gguf"  # an interrupted download: header whole, data missing
    data = tiny_models[0].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    manifest = write_manifest(
        tmp_path / "profiles.yaml",
        llama_server_bin,
        tiny_models,
        another_port(),
        f"  broken:\n    model: {broken}\n    ctx_size: 512\n"
        f"  cut:\n    model: {cut}\n    ctx_size: 512\n"
        f"  kept:\n    model: {tiny_models[0]}\n    ctx_size: 512\n    keep_kv: 64KiB\n",
    )
    manifest.write_text(
        manifest.read_text().replace(
            "serve:\n", "serve:\n  header_timeout: 2s\n  body_timeout: 5s\n  max_connections: 64\n"
        )
    )
    rows: list[Row] = []
    served = start_serve(manifest, free_port, tmp_path)
    try:
        served = _run_faults(served, manifest, free_port, tmp_path, llama_server_bin, rows)
    finally:
        stop_serve(served)
        Supervisor(paths.state_dir(), lock_timeout=60).stop()
    final = Row("(after everything: serve stopped, llmctl stop)")
    final.orphans = len(llama_pids(llama_server_bin))
    rows.append(final)
    table = _table(rows)
    with capsys.disabled():
        sys.stdout.write("\n" + table + "\n")
    (tmp_path / "faults-table.txt").write_text(table)
    assert sum(r.lost for r in rows) == 0, table + "\n" + _notes(rows)
    assert sum(r.orphans for r in rows) == 0, table
    assert "Traceback" not in served.logs()


def _run_faults(
    served: Served, manifest: Path, port: int, tmp: Path, binary: Path, rows: list[Row]
) -> Served:
    chat_url = served.url + "/v1/chat/completions"

    def fault(name: str) -> Tally:
        rows.append(Row(name))
        return Tally(rows[-1])

    def done(t: Tally) -> None:
        t.row.orphans = orphans(binary)

    # 1. an operator switches and stops from a shell while clients keep sending: a switch
    # fails no request; a stop wins over the requests that waited before it (503 model_stopped,
    # supervisor/stops.py) and the next requests load the profile again
    t = fault("switch/stop from a shell under load")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    with traffic(served, t, streams=True):
        for step in [["stop"], ["switch", "tiny-b", "--manifest", str(manifest)]] * 2:
            assert llmctl(*step).returncode == 0
    other = t.row.refused - t.row.codes.get("model_stopped", 0)
    if other:
        t.row.lost += other  # nothing but the stop's own 503 may fail a request
        t.row.refused -= other
        t.row.notes.append(f"{other} refused during an operator's change: {t.row.codes}")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    done(t)

    # 2. kill -9 of llama-server while clients send; the next requests bring it back
    t = fault("kill -9 llama-server under load")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    with traffic(served, t, streams=True):
        for pid in llama_pids(binary):
            os.kill(pid, signal.SIGKILL)
        t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    assert t.row.ok >= 2
    done(t)

    # 3. kill -9 of `llmctl serve`: a new one adopts the server that still runs
    t = fault("kill -9 llmctl serve")
    served.proc.kill()
    served.proc.wait()
    served = start_serve(manifest, port, tmp)
    for _ in range(5):
        t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                                  json={**CHAT, "model": "A"}, timeout=120))  # fmt: skip
    assert len(llama_pids(binary)) == 1
    done(t)

    # 4. kill -9 of `llmctl switch` while it loads; the next command repairs
    t = fault("kill -9 llmctl switch mid-load")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", "switch", "tiny-long", "--manifest", str(manifest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "starting profile" in line:
            break
    proc.kill()
    proc.wait()
    proc.stderr.close()
    out = llmctl("status", "--json")
    t.count("ok" if out.returncode == 0 else "lost", out.stderr)
    t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                              json={**CHAT, "model": "A"}, timeout=120))  # fmt: skip
    done(t)

    # 5. a corrupt state file: the running server is found by its launch id
    t = fault("corrupt state.json")
    (paths.state_dir() / "state.json").write_text("{not json")
    out = llmctl("status", "--json")
    adopted = out.returncode == 0 and json.loads(out.stdout)["running"] is True
    t.count("ok" if adopted else "lost", out.stdout + out.stderr)
    t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                              json={**CHAT, "model": "A"}, timeout=120))  # fmt: skip
    done(t)

    # 6. a state folder that is a file: clear errors, exit 4, nothing stopped
    t = fault("state folder is a file")
    blocker = tmp / "state-is-a-file"
    blocker.write_text("x")
    env = {**os.environ, "LLMCTL_STATE_DIR": str(blocker)}
    for args in (["stop"], ["switch", "tiny-b", "--manifest", str(manifest)]):
        out = subprocess.run([sys.executable, "-m", "llmctl", *args, "--json"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        clean = out.returncode == 4 and "Traceback" not in out.stderr
        t.count("refused" if clean else "lost", out.stdout + out.stderr)
    assert len(llama_pids(binary)) == 1
    done(t)

    # 7. slow clients: half-sent headers beyond the connection limit; /health keeps answering
    t = fault("slowloris: 200 half-open connections")
    conns = []
    for _ in range(200):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        conns.append(c)
    for _ in range(10):
        t.send(lambda: httpx.get(served.url + "/health", timeout=10))
    t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                              json={**CHAT, "model": "A"}, timeout=120))  # fmt: skip
    for c in conns:
        c.close()
    done(t)

    # 8. breaker abuse: a profile that cannot load, requests llama-server refuses (501)
    t = fault("breaker abuse: broken profile, 501s")
    for _ in range(8):
        t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                                  json={**CHAT, "model": "broken"}, timeout=120), ok=(503,))  # fmt: skip
    for _ in range(8):
        t.send(lambda: httpx.post(served.url + "/v1/embeddings",
                                  json={"model": "A", "input": "x"}, timeout=120), ok=(501,))  # fmt: skip
    for _ in range(3):
        t.send(lambda: httpx.post(served.url + "/v1/chat/completions",
                                  json={**CHAT, "model": "A"}, timeout=120))  # fmt: skip
    done(t)

    # 9. path tricks: dot segments and encoded slashes never reach an upstream
    t = fault("path tricks (dot segments, %2e, %2f)")
    for path in ("/v1/../health", "/v1/%2e%2e/admin", "/v1/chat%2fcompletions",
                 "/v1/./models", "/v1/%252e%252e/x", "/v1/a%5c..%5cb"):  # fmt: skip
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = c.recv(100)
        t.count(
            "ok" if head.startswith(b"HTTP/1.1 400 ") else "lost", head.decode(errors="replace")
        )
    done(t)

    # 10. malformed and aborted requests
    t = fault("deep JSON, aborted uploads, slow body")
    t.send(lambda: httpx.post(served.url + "/v1/chat/completions", content=b"[" * 100_000,
                              headers={"content-type": "application/json"}), ok=(400,))  # fmt: skip
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 9999\r\n\r\n{")  # fmt: skip
        t.count("ok")  # the client left; what matters is what the router does next
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 99\r\n\r\n{")  # fmt: skip
        c.settimeout(30)
        head = c.recv(100)
    t.count("ok" if head.startswith(b"HTTP/1.1 408 ") else "lost", head.decode(errors="replace"))
    t.send(lambda: httpx.get(served.url + "/health", timeout=10))
    done(t)
    # 11. a foreign web page: DNS rebinding (foreign Host) and cross-site forms (foreign Origin)
    t = fault("rebinding and cross-site pages")
    before = llmctl("status", "--json").stdout
    attacks: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", "/models/status", {"host": f"evil.test:{port}"}, b""),
        ("GET", "/ui/api/log?server=managed", {"host": f"rebind.example:{port}"}, b""),
        (
            "POST",
            "/models/stop",
            {"origin": "https://evil.test", "content-type": "text/plain"},
            b"{}",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"origin": "https://evil.test", "content-type": "text/plain"},
            json.dumps({**CHAT, "model": "A"}).encode(),
        ),
        (
            "POST",
            "/models/switch",
            {"sec-fetch-site": "cross-site", "content-type": "text/plain"},
            b'{"profile": "tiny-b"}',
        ),
    ]
    for method, path, headers, body in attacks:
        r = httpx.request(method, served.url + path, headers=headers, content=body, timeout=30)
        refused = r.status_code == 403 and "access-control-allow-origin" not in r.headers
        t.count("refused" if refused else "lost", f"{method} {path}: {r.status_code}")
    after = llmctl("status", "--json").stdout
    if json.loads(before).get("profile") != json.loads(after).get("profile"):
        t.count("lost", "a foreign page changed what runs")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    done(t)

    # 12. a truncated GGUF: refused before anything stops, the running server untouched
    t = fault("truncated GGUF (interrupted download)")
    running = llama_pids(binary)
    out = llmctl("switch", "cut", "--manifest", str(manifest), "--json")
    t.count("refused" if out.returncode == 2 and "cut short" in out.stdout + out.stderr
            else "lost", out.stdout + out.stderr)  # fmt: skip
    if llama_pids(binary) != running:
        t.count("lost", "a running server stopped for a broken file")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    done(t)

    # 13. slot flood: clients saving the slots of a keep_kv profile, whose folder is llmctl's
    t = fault("slot flood on a keep_kv profile")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "kept"}, timeout=120))
    for i in range(50):
        r = httpx.post(served.url + "/slots/0?action=save",
                       json={"model": "kept", "filename": f"s{i}.bin"}, timeout=30)  # fmt: skip
        t.count("refused" if r.status_code == 403 else "lost", f"save: {r.status_code}")
    kv = paths.state_dir() / "kv"
    written = sum(f.stat().st_size for f in kv.rglob("*") if f.is_file()) if kv.exists() else 0
    if written > 64 * 1024:
        t.count("lost", f"{written} bytes in the slot folder past keep_kv")
    done(t)

    # 14. fd exhaustion by log streams: many dashboard log streams, /health keeps answering
    t = fault("log streams (fd exhaustion)")
    streams = []
    for _ in range(60):
        c = socket.create_connection(("127.0.0.1", port))
        c.settimeout(30)
        c.sendall(b"GET /ui/api/log?lines=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status = c.recv(64).split(b" ")[1]
        t.count("ok" if status == b"200" else "refused" if status == b"429" else "lost",
                status.decode())  # fmt: skip
        streams.append(c)
    for _ in range(5):
        t.send(lambda: httpx.get(served.url + "/health", timeout=10))
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "A"}, timeout=120))
    for c in streams:
        c.close()
    done(t)

    # 15. a stop from a shell while the router loads for a request: the stop wins at once, the
    # request is answered (200 if its load won the race, else 503 model_stopped), and nothing
    # runs afterwards until a new request comes
    t = fault("stop from a shell during a router load")
    assert llmctl("stop").returncode == 0
    answers: list[httpx.Response] = []

    def waiting() -> None:
        answers.append(httpx.post(chat_url, json={**CHAT, "model": "tiny-long"}, timeout=120))

    client = threading.Thread(target=waiting)
    client.start()

    def loading() -> bool:
        with contextlib.suppress(Exception):
            rec = read_state(paths.state_dir())
            return rec is not None or bool(answers)
        return False

    while not loading():
        client.join(0.005)
    stop = llmctl("stop", "--json")
    client.join(120)
    t.count("ok" if stop.returncode == 0 else "lost", stop.stdout + stop.stderr)
    for r in answers:
        ok = r.status_code == 200 or _code(r) == "model_stopped"
        t.count("ok" if r.status_code == 200 else "refused" if ok else "lost", r.text)
    if llama_pids(binary):
        t.count("lost", "a llama-server runs after the stop with no request after it")
    t.send(lambda: httpx.post(chat_url, json={**CHAT, "model": "tiny-long"}, timeout=120))
    done(t)

    logs = served.logs()
    if "internal error" in logs or "Traceback" in logs:
        rows[-1].lost += 1
        rows[-1].notes.append("the router logged an internal error")
    return served


def _table(rows: list[Row]) -> str:
    head = f"{'fault':<44} {'requests':>8} {'ok':>5} {'refused':>7} {'lost':>5} {'orphans':>7}"
    lines = ["fault-injection suite", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.fault:<44} {r.sent:>8} {r.ok:>5} {r.refused:>7} {r.lost:>5} {r.orphans:>7}"
        )
    faults = len([r for r in rows if r.sent])
    total = (sum(r.sent for r in rows), sum(r.ok for r in rows), sum(r.refused for r in rows))
    lines.append("-" * len(head))
    lines.append(
        f"{f'{faults} faults':<44} {total[0]:>8} {total[1]:>5} {total[2]:>7} "
        f"{sum(r.lost for r in rows):>5} {sum(r.orphans for r in rows):>7}"
    )
    return "\n".join(lines)


def _notes(rows: list[Row]) -> str:
    return "\n".join(f"{r.fault}: {n}" for r in rows for n in r.notes)
