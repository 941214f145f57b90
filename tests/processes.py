"""Running llmctl and stopping the processes a test started, the same way everywhere; which
modules a command imports (the start-up guards)."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str],
    timeout: float = 10.0,
    sig: int = signal.SIGTERM,
) -> int:
    """Send `sig` (SIGTERM), wait up to `timeout`, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llmctl(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`llmctl ARGS` as a user runs it: its own process, text output, any exit status; `env`
    (else this one's) is its whole environment."""
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


_PROBE = (
    "import json, sys\n"
    "from llmctl.cli import main\n"
    "sys.argv = ['llmctl'] + sys.argv[1:]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('\\nMODULES', json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)


def imported_modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module `llmctl ARGS` has imported when it ends, run in its own process as a user
    runs it (`env`, else this one's, is its whole environment)."""
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    for line in reversed(res.stderr.splitlines()):
        if line.startswith("MODULES "):
            found: list[str] = json.loads(line.removeprefix("MODULES "))
            return set(found)
    raise AssertionError(f"llmctl {' '.join(args)} did not finish: {res.stderr[-2000:]}")


def free_port_range(n: int) -> int:
    """The first of n consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def ps() -> dict[str, dict[str, object]]:
    out = llmctl("ps", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return {s["profile"]: s for s in json.loads(out.stdout)["servers"]}


def raw_request(url: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send the request line exactly as given: HTTP clients normalise dot segments themselves."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]
