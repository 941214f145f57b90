"""Every profile field starts the REAL llama-server: a manifest whose profiles set each field of
the flag table (and mmap/mlock, spelled as the build spells them) is switched to, profile by
profile, on the configured build (`LLMCTL_TEST_LLAMA_SERVER` names another: b9093, b11434).
`rpc` needs RPC servers and is started in tests/llama/test_rpc_split.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.llama.binary import list_devices
from llmctl.llama.flags import FLAGS
from supervisor_helpers import llama_pids

# the fields set below, per profile; each profile must start and answer /health
PROFILES: dict[str, dict[str, object]] = {
    "chat": {
        "ctx_size": 2048,
        "parallel": 2,
        "n_gpu_layers": 0,
        "kv_unified": True,
        "swa_full": True,
        "cache_type_k": "q8_0",
        "cache_type_v": "q8_0",
        "flash_attn": "on",
        "batch_size": 512,
        "ubatch_size": 256,
        "threads": 2,
        "threads_batch": 2,
        "no_kv_offload": True,
        "n_cpu_moe": 1,
        "override_tensor": "token_embd=CPU",
        "jinja": True,
        "chat_template": "chatml",
        "reasoning_format": "none",
        "temp": 0.5,
        "top_k": 20,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "seed": 42,
        "metrics": True,
        "mmap": False,
        "mlock": True,
    },
    "templated": {
        "kv_unified": False,
        "flash_attn": "off",
        "chat_template_file": "{template}",  # a template of its own needs jinja (the default)
        "mmap": True,
        "mlock": False,
    },
    "devices": {"split_mode": "none", "tensor_split": "1", "main_gpu": 0},
    "embed": {"embedding": True, "pooling": "mean", "jinja": False, "mlock": True},
    "drafted": {"model_draft": "{draft}", "ctx_size": 1024},
    "vision": {"model": "{vision}", "mmproj": "{projector}", "ctx_size": 1024},
    "rerank": {"model": "{ranker}", "reranking": True},
}
ELSEWHERE = {"rpc"}  # started with real RPC servers in tests/llama/test_rpc_split.py


def test_the_profiles_set_every_field_of_the_flag_table() -> None:
    fields = {f.field for f in FLAGS} - {"model"} - ELSEWHERE
    used = {k for p in PROFILES.values() for k in p}
    assert fields <= used, sorted(fields - used)
    assert {"mmap", "mlock"} <= used


def _models(folder: Path) -> dict[str, str]:
    from llmctl.testing.realshapes import ProjectorShape, write_projector
    from llmctl.testing.testmodels import write_tiny_model

    template = folder / "template.jinja"
    template.write_text(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    )
    eye = ProjectorShape(
        "mmproj-eye", "a tiny SigLIP", "gemma3", "eye", image_size=112, patch_size=14,
        n_embd=64, n_ff=128, n_head=2, n_block=1, projection_dim=256,
    )  # fmt: skip
    return {
        "model": str(write_tiny_model(folder / "tiny.gguf")),
        "draft": str(write_tiny_model(folder / "draft.gguf")),
        "vision": str(write_tiny_model(folder / "eye.gguf", arch="gemma3")),
        "projector": str(write_projector(folder, eye)),
        "ranker": str(write_tiny_model(folder / "ranker.gguf")),
        "template": str(template),
    }


def _manifest(tmp_path: Path, binary: Path) -> Path:
    paths = _models(tmp_path)
    lines = [f"version: 1\nserver:\n  binary: {binary}\nprofiles:"]
    for name, fields in PROFILES.items():
        lines.append(f"  {name}:")
        values = {"model": paths["model"], **fields}
        for key, value in values.items():
            if isinstance(value, str) and value.startswith("{"):
                value = paths[value.strip("{}")]
            lines.append(f"    {key}: {json.dumps(value)}")
    path = tmp_path / "profiles.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _llmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_field_starts_llama_server(
    profile: str, tmp_path: Path, llama_server_bin: Path
) -> None:
    manifest = _manifest(tmp_path, llama_server_bin)
    try:
        out = _llmctl("switch", profile, "--manifest", str(manifest))
        if profile == "devices" and not list_devices(str(llama_server_bin)):
            # no GPU here: b9093 refuses `-mg 0` (newer builds ignore it); lint says so first,
            # and a failed switch names the cause first
            lint = _llmctl("lint", "--manifest", str(manifest))
            assert "main-gpu" in lint.stdout, lint.stdout
            if out.returncode != 0:
                said = out.stderr.split("error line first):", 1)[1].splitlines()[1]
                assert "invalid value for main_gpu" in said, out.stderr
                return
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(_llmctl("status", "--json").stdout)
        assert status["running"] and status["healthy"] and status["profile"] == profile, status
        argv = _llmctl("command", profile, "--manifest", str(manifest)).stdout.split()
        assert str(llama_server_bin) in argv
        # each field set reached the command line, in the spelling the table gives
        for f in FLAGS:
            value = PROFILES[profile].get(f.field)
            if value is None or (f.kind == "switch" and value is False):
                continue
            flag = f.off_flag if f.kind == "bool-pair" and value is False else f.flag
            assert flag in argv, (f.field, argv)
        fields = PROFILES[profile]
        if fields.get("mmap") is False or fields.get("mlock") is True:  # not the default
            assert {"--load-mode", "--no-mmap", "--mlock"} & set(argv), (
                argv
            )  # as the build spells it
    finally:
        assert _llmctl("stop").returncode == 0
    assert llama_pids(llama_server_bin) == []
