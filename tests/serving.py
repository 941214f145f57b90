"""A real `llmctl serve` process for tests: start it, wait for /health, stop it."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmctl import paths
from processes import stop_process
from supervisor_helpers import llama_pids as session_pids


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    manifest: Path
    log: Path

    def client(self, **kw: object) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kw)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def serve_argv(manifest: Path, port: int, *args: str) -> list[str]:
    """`llmctl serve` as a subprocess, with this interpreter."""
    return [sys.executable, "-m", "llmctl", "serve", "--manifest", str(manifest),
            "--port", str(port), *args]  # fmt: skip


def start_serve(
    manifest: Path,
    port: int,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Served:
    """`env`: the whole environment of the process (default: this one's); `nofile`: its
    open-file limit (RLIMIT_NOFILE)."""

    def limit() -> None:
        if nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tmp_path / f"serve-{port}.log"
    out = log.open("ab")  # a serve started again on the same port appends to its log
    proc = subprocess.Popen(
        serve_argv(manifest, port, *args),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=limit if nofile is not None else None,
    )
    out.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return Served(url, proc, manifest, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"serve did not start:\n{log.read_text()}")


def stop_serve(served: Served) -> int:
    return stop_process(served.proc, timeout=30)


def write_manifest(
    path: Path, binary: Path, models: tuple[Path, Path, Path], llama_port: int, extra: str = ""
) -> Path:
    a, b, long_model = models
    path.write_text(
        f"""version: 1
server:
  binary: {binary}
  port: {llama_port}
  ready_timeout: 60s
gpu:
  vram: 24GiB
serve:
  queue: {{max_size: 50, timeout: 60s}}
profiles:
  tiny-a:
    model: {a}
    aliases: [A, chat-a]
    ctx_size: 512
    parallel: 2
  tiny-b:
    model: {b}
    aliases: [B]
    ctx_size: 512
    parallel: 2
  tiny-long:
    model: {long_model}
    ctx_size: 16384
    parallel: 1
{extra}"""
    )
    return path


def llama_pids(binary: Path) -> list[int]:
    """llama-servers started for this test (other tests may run their own at the same time)."""
    return session_pids(binary, paths.state_dir())
