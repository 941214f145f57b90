"""Tiny generated models: readable by gguf-py and llmctl's reader, loaded and served by the real llama-server."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmctl.llama.gguf import read_gguf
from llmctl.testing.testmodels import ARCHITECTURES, write_tiny_model
from processes import stop_process


def _get(url: str, body: dict[str, object] | None = None, timeout: float = 30) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):  # refused, reset, or no answer within `timeout`
        return 0, ""


def serve_and_chat(binary: Path, model: Path, port: int, *extra: str) -> tuple[int, str, str]:
    """Start llama-server on `model`, ask one chat completion, stop it; (status, body, stderr)."""
    log = model.with_suffix(".log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--port", str(port), "-c", "512", "-np", "1", *extra],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                status, _ = _get(f"http://127.0.0.1:{port}/health", timeout=2)
                if status == 200:
                    break
                time.sleep(0.05)
            if proc.poll() is not None:
                return -1, "", log.read_text(errors="replace")
            status, body = _get(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
            )
        finally:
            stop_process(proc)
    return status, body, log.read_text(errors="replace")


def test_llama_default_is_readable_by_gguf_py(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = write_tiny_model(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    ours = read_gguf(path)
    assert [t.name for t in reader.tensors] == [t.name for t in ours.tensors]
    assert [int(t.n_bytes) for t in reader.tensors] == [t.nbytes for t in ours.tensors]
    assert reader.fields["general.architecture"].contents() == "llama"
    assert ours.metadata["llama.block_count"] == 2


def test_tied_model_has_no_output_tensor(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "m.gguf", tied=True)
    names = {t.name for t in read_gguf(path).tensors}
    assert "output.weight" not in names
    assert "token_embd.weight" in names


def test_unknown_architecture_and_override_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tiny model"):
        write_tiny_model(tmp_path / "m.gguf", arch="nonesuch")
    with pytest.raises(TypeError, match="n_layers"):
        write_tiny_model(tmp_path / "m.gguf", n_layers=3)


def test_llama_serves_chat_completions(
    tmp_path: Path, llama_server_bin: Path, free_port: int
) -> None:
    path = write_tiny_model(tmp_path / "llama.gguf")
    status, body, stderr = serve_and_chat(llama_server_bin, path, free_port)
    assert status == 200, stderr[-2000:]
    reply = json.loads(body)
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_loads_and_answers(
    arch: str, tmp_path: Path, llama_server_bin: Path, free_port: int
) -> None:
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch=arch)
    # on CPUs with AMX, the repacked weights of an MLA model leave an op without a backend
    # (GGML_ASSERT in ggml_backend_sched_split_graph); --no-repack avoids it
    extra = ["--no-repack"] if arch == "deepseek2" else []
    status, _body, stderr = serve_and_chat(llama_server_bin, path, free_port, *extra)
    assert status == 200, stderr[-3000:]
