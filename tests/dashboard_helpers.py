"""A real `llmctl serve` with an API key and real tiny models, for the dashboard's tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from serving import Served, start_serve, stop_serve

KEY = "dashboard-test-key"


def write_models(folder: Path) -> tuple[Path, Path, Path]:
    """Two tiny models and a broken copy of one: whole, but its header names a layer its
    tensors lack, so llmctl's checks pass and llama-server refuses it while reading the model."""
    from llmctl.testing.testmodels import write_tiny_model

    a = write_tiny_model(folder / "tiny-a.gguf", arch="llama")
    b = write_tiny_model(folder / "tiny-b.gguf", arch="llama", seed=7)
    broken = folder / "broken.gguf"
    data = bytearray(a.read_bytes())
    key = b"llama.block_count"
    at = data.index(key) + len(key) + 4  # the key, its value type (u32), then the value
    data[at : at + 4] = (int.from_bytes(data[at : at + 4], "little") + 1).to_bytes(4, "little")
    broken.write_bytes(bytes(data))
    return a, b, broken


def write_manifest(
    path: Path, binary: Path, models: tuple[Path, Path, Path], llama_port: int
) -> Path:
    a, b, broken = models
    path.write_text(
        f"""version: 1
server:
  binary: {binary}
  port: {llama_port}
  ready_timeout: 60s
gpu:
  vram: 2GiB
serve:
  api_keys: [{KEY}]
profiles:
  tiny-a:
    model: {a}
    aliases: [A]
    description: a tiny llama, all layers on the GPU
    ctx_size: 512
    parallel: 2
  tiny-b:
    model: {b}
    ctx_size: 1024
    parallel: 1
    n_gpu_layers: 0
  broken:
    model: {broken}
    ctx_size: 512
"""
    )
    return path


@contextlib.contextmanager
def serving_dashboard(
    tmp_path: Path, binary: Path, models: tuple[Path, Path, Path], port: int
) -> Iterator[Served]:
    """A real `llmctl serve` over the manifest above; its servers stopped afterwards."""
    from fakes.fake_upstream import free_port as another_port
    from llmctl import paths
    from llmctl.supervisor.lifecycle import Supervisor

    manifest = write_manifest(tmp_path / "profiles.yaml", binary, models, another_port())
    s = start_serve(manifest, port, tmp_path)
    try:
        yield s
    finally:
        stop_serve(s)
        Supervisor(paths.state_dir(), lock_timeout=30).stop()
