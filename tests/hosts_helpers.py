"""Two real `llmctl serve` processes on loopback, each with its own state folder and llama-server:
the front one lists the back one as a host (`type: llmctl`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serving import Served, start_serve, stop_serve


def host_manifest(
    path: Path,
    binary: Path,
    model: Path,
    llama_port: int,
    *,
    profiles: tuple[str, ...] = ("tiny",),
    upstreams: str = "",
    serve: str = "",
) -> Path:
    lines = [
        "version: 1",
        "server:",
        f"  binary: {binary}",
        f"  port: {llama_port}",
        "  ready_timeout: 60s",
        "gpu:",
        "  vram: 24GiB",
        "serve:",
        "  queue: {max_size: 50, timeout: 60s}",
    ]
    lines += [f"  {line}" for line in serve.splitlines() if line.strip()]
    if upstreams:
        lines.append("  upstreams:")
        lines += [f"    {line}" for line in upstreams.splitlines() if line.strip()]
    lines.append("profiles:")
    for name in profiles:
        lines += [f"  {name}:", f"    model: {model}", "    ctx_size: 512", "    parallel: 2"]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Host:
    """One `llmctl serve` with its own folders, so two of them never share a state file."""

    name: str
    manifest: Path
    port: int
    folder: Path
    env: dict[str, str]
    served: Served | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Host:
        self.served = start_serve(self.manifest, self.port, self.folder, env=self.env)
        return self

    def stop(self) -> None:
        if self.served is not None:
            stop_serve(self.served)
            self.served = None

    def logs(self) -> str:
        log = self.folder / f"serve-{self.port}.log"
        return log.read_text(errors="replace") if log.exists() else ""


def make_host(
    tmp_path: Path, name: str, manifest: Path, port: int, extra_env: dict[str, str] | None = None
) -> Host:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["LLMCTL_STATE_DIR"] = str(folder / "state")
    env["LLMCTL_CACHE_DIR"] = str(folder / "cache")
    env.update(extra_env or {})
    return Host(name, manifest, port, folder, env)


def stop_llama_servers(host: Host) -> None:
    """Whatever llama-server this host's state folder still names (after a crash of its serve)."""
    from llmctl.supervisor.lifecycle import Supervisor

    Supervisor(Path(host.env["LLMCTL_STATE_DIR"]), lock_timeout=30).stop()


def state(url: str, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(url + "/llmctl/v1/state", headers=headers, timeout=10)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def host_entry(url: str, name: str, key: str | None = None) -> dict[str, Any]:
    return next(h for h in state(url, key)["hosts"] if h["name"] == name)


def wait_until(
    what: str, check: Callable[[], bool], timeout: float = 60.0, logs: Callable[[], str] = str
) -> None:
    """Poll observable state until `check()` holds; fail with `what` (and logs) past `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, StopIteration, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}\n{logs()[-4000:]}")
        time.sleep(0.05)
