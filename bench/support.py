"""What the benchmarks share: the llama-server to run, a free port, the llmctl command.

Benchmarks run as scripts (`python bench/NAME.py`), so this folder is on sys.path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def find_llama_server() -> str:
    """$LLMCTL_LLAMA_SERVER, else llama-server on PATH, else the project's cached build."""
    given = os.environ.get("LLMCTL_LLAMA_SERVER") or shutil.which("llama-server")
    if given:
        return given
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-llama-server.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llmctl_cmd() -> list[str]:
    """The installed llmctl script beside this interpreter, else `python -m llmctl`."""
    script = Path(sys.executable).parent / "llmctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmctl"]


def stub_router_app(upstream_url: str, workdir: Path) -> Any:
    """`create_app` on the managed-server path, its queue lease included, in front of a FAKE
    upstream at `upstream_url` that stands for a llama-server already running profile `bench`
    (bench/router_overhead.py, bench/request_path.py). Returns the app and its manifest."""
    from llmctl.manifest.validate import load_manifest
    from llmctl.router.app import create_app
    from llmctl.supervisor.launch import LaunchSpec
    from llmctl.supervisor.results import Status

    class StubSupervisor:
        """The FAKE upstream stands for a llama-server already running profile `bench`."""

        state_dir = workdir / "state"

        def records(self) -> dict[str, Any]:
            return {}  # no server of its own to stop on exit

        def status(self, *, check_health: bool = True, timeout: float = 0.5) -> Status:
            return Status(
                running=True, profile="bench", pid=os.getpid(), url=upstream_url, healthy=True
            )

    manifest_path = workdir / "profiles.yaml"
    manifest_path.write_text("version: 1\nprofiles:\n  bench:\n    model: /bench/model.gguf\n")

    def spec_for(manifest: Any, name: str) -> LaunchSpec:
        return LaunchSpec(profile=name, argv=("llama-server",))

    manifest = load_manifest(manifest_path)
    app = create_app(manifest, StubSupervisor(), spec_for=spec_for, idle_unload=False)  # type: ignore[arg-type]
    app.state.router.bound_to("127.0.0.1")
    return app, manifest
