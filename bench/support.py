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
