"""`llmctl estimate`, `llmctl fit`, the llama-server command-line reader, and the memory lint rules."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.errors import UsageError
from llmctl.lint.memory import memory_problems
from llmctl.llama.gguf import read_gguf
from llmctl.manifest.validate import load_manifest
from llmctl.memory.cmdline import parse_llama_args
from llmctl.memory.estimate import ModelSource, estimate
from llmctl.memory.options import LaunchOptions
from llmctl.memory.profile import binary_rules
from llmctl.testing.testmodels import write_tiny_model

runner = CliRunner()
PATTERN = [il % 6 != 5 for il in range(30)]
GEMMA4_BLOCK = textwrap.indent(
    textwrap.dedent(
        f"""\
        general.architecture: gemma4
        block_count: 30
        context_length: 262144
        embedding_length: 2816
        attention.head_count: 16
        attention.head_count_kv: {[8 if s else 2 for s in PATTERN]}
        attention.key_length: 512
        attention.value_length: 512
        attention.key_length_swa: 256
        attention.value_length_swa: 256
        attention.sliding_window: 1024
        attention.sliding_window_pattern: {json.dumps(PATTERN)}
        vocab_size: 262144
        weights_bytes: 12GiB
        """
    ),
    "      ",
)


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(build_app(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def manifest(tmp: Path, body: str, vram: str | None = "24GiB") -> Path:
    gpu = f"gpu:\n  vram: {vram}\n" if vram else ""
    path = tmp / "profiles.yaml"
    path.write_text(f"version: 1\n{gpu}profiles:\n" + body)
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny.gguf", arch="gemma3")


def test_estimate_profile_json_matches_the_core(tmp_path: Path, tiny: Path) -> None:
    m = manifest(tmp_path, f"  t:\n    model: {tiny}\n    ctx_size: 2048\n    cache_type_k: q8_0\n")
    code, out, _ = cli("estimate", "t", "--json", "--manifest", str(m))
    assert code == 0
    (obj,) = json.loads(out)
    assert obj["profile"] == "t"
    assert obj["architecture"] == "gemma3"
    assert obj["exact"] is True
    assert [c["kind"] for c in obj["kv_cache"]["caches"]] == ["full", "swa"]
    assert obj["kv_cache"]["caches"][0]["k_type"] == "q8_0"
    core = estimate(
        ModelSource.from_gguf(read_gguf(tiny)),
        LaunchOptions(ctx_size=2048, cache_type_k="q8_0"),
        budget=24 * 1024**3,
        headroom=512 * 1024**2,
        overhead=400 * 1024**2,
        profile="t",
    )
    plans = obj.pop("plans")
    assert obj == json.loads(json.dumps(core.to_json()))
    assert plans[0]["devices"] == ["GPU"] and plans[0]["launch_args"] == []
    assert obj["fits"] is True


def test_estimate_human_output(tmp_path: Path, tiny: Path) -> None:
    m = manifest(tmp_path, f"  t:\n    model: {tiny}\n")
    code, out, _ = cli("estimate", "t", "--manifest", str(m))
    assert code == 0
    for text in ("KV full", "KV swa", "weights", "compute", "GPU total", "fits"):
        assert text in out


def test_missing_file_is_reported_per_profile(tmp_path: Path, tiny: Path) -> None:
    body = (
        f"  ok:\n    model: {tiny}\n"
        f"  gone:\n    model: {tmp_path / 'nope.gguf'}\n"
        f"  remote:\n    model: {tmp_path / 'gemma-4-26b.gguf'}\n    ctx_size: 32768\n"
        f"    metadata:\n{GEMMA4_BLOCK}"
    )
    m = manifest(tmp_path, body)
    code, out, _ = cli("estimate", "--all", "--json", "--manifest", str(m))
    assert code == 1
    ok, gone, remote = json.loads(out)
    assert ok["profile"] == "ok" and "kv_cache" in ok
    assert gone["profile"] == "gone" and "missing" in gone["error"]["message"]
    assert gone["ok"] is False and gone["error"]["type"] == "LlmctlError"
    assert remote["architecture"] == "gemma4" and remote["exact"] is True
    assert remote["weights"]["bytes"] == 12 * 1024**3
    code, out, _ = cli("estimate", "--all", "--manifest", str(m))
    assert code == 1
    assert "cannot estimate" in out and "missing" in out


def test_estimate_a_llama_server_command_line(tiny: Path) -> None:
    code, out, _ = cli(
        "estimate", "--json", "--", "llama-server", "-m", str(tiny), "-c", "3000", "-np", "2",
        "--threads", "4", "--jinja", "-fa", "off", "--no-kv-unified",
    )  # fmt: skip
    assert code == 0
    (obj,) = json.loads(out)
    assert (obj["n_ctx"], obj["n_ctx_seq"], obj["n_stream"]) == (3072, 1536, 2)
    assert obj["flash_attn"] == "off"
    assert obj["ignored_args"] == ["--threads 4", "--jinja"]
    assert obj["profile"] is None
    assert any("--fit" in n for n in obj["notes"])
    code, out, _ = cli("estimate", "--json", "--", "-m", str(tiny), "-c", "512", "-ngl", "99")
    assert not any("--fit" in n for n in json.loads(out)[0]["notes"])


def test_command_line_errors_are_usage_errors(tmp_path: Path) -> None:
    code, _, err = cli("estimate", "--", "-c", "2048")
    assert code == 2 and "-m/--model" in err
    code, _, err = cli("estimate", "--", "-m", str(tmp_path / "x.gguf"))
    assert code == 2 and "no such file" in err
    code, _, err = cli("estimate", "--manifest", str(manifest(tmp_path, "  {}\n")))
    assert code == 2


def test_fit_command(tmp_path: Path) -> None:
    body = (
        f"  g4:\n    model: {tmp_path / 'g.gguf'}\n    ctx_size: 131072\n    swa_full: true\n"
        f"    cache_type_k: q8_0\n    cache_type_v: q8_0\n    parallel: 1\n"
        f"    metadata:\n{GEMMA4_BLOCK}"
    )
    m = manifest(tmp_path, body)
    code, out, _ = cli("fit", "g4", "--manifest", str(m))
    assert code == 1  # does not fit as it is
    assert "does not fit" in out and "q4_0" in out and "swa_full: false" in out
    code, out, _ = cli("fit", "g4", "--manifest", str(m), "--vram", "80GiB", "--json")
    assert code == 0
    advice = json.loads(out)
    assert advice["fits"] is True and advice["max_ctx_size"] >= 131072
    # no GPU budget (and none found): judged against this machine's RAM (tests/memory/test_fit.py)
    code, out, _ = cli("fit", "g4", "--manifest", str(manifest(tmp_path, body, vram=None)))
    assert code in (0, 1) and out.startswith("no GPU: judged against ")
    code, _, err = cli("fit", "g4", "--manifest", str(m), "--vram", "lots")
    assert code == 2 and "--vram" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "a.gguf"], {}),
        (["--ctx-size=8192", "-np", "-1"], {"ctx_size": 8192, "parallel": -1}),
        (["-kvu", "--swa-full", "-nkvo"], {"kv_unified": True, "swa_full": True, "no_kv_offload": True}),
        (["-no-kvu", "-ctk", "Q8_0", "-ctv", "q4_0"], {"kv_unified": False, "cache_type_k": "q8_0", "cache_type_v": "q4_0"}),
        (["-fa", "enabled", "-b", "1024", "-ub", "256"], {"flash_attn": "on", "batch_size": 1024, "ubatch_size": 256}),
        (["--flash-attn", "0", "-ngl", "all"], {"flash_attn": "off", "n_gpu_layers": -1}),
        (["-fa", "-1", "--gpu-layers", "20"], {"flash_attn": "auto", "n_gpu_layers": 20}),
    ],
)  # fmt: skip
def test_parse_llama_args(argv: list[str], expected: dict[str, Any]) -> None:
    parsed = parse_llama_args(["llama-server", *argv])
    for key, value in expected.items():
        assert getattr(parsed.options, key) == value
    assert not parsed.ignored


def test_parse_llama_args_lists_what_it_ignores_and_refuses_bad_values() -> None:
    parsed = parse_llama_args(["-m", "x.gguf", "--seed", "-1", "--mlock", "--port", "8080", "-v"])
    assert parsed.model == "x.gguf"
    assert parsed.ignored == ["--seed -1", "--mlock", "--port 8080", "-v"]
    for bad in (["-np", "0"], ["-c", "lots"], ["-fa", "maybe"], ["-ctk", "q3_k"], ["-c"]):
        with pytest.raises(UsageError):
            parse_llama_args(bad)


def rules(tmp: Path, body: str, vram: str | None = "24GiB") -> list[tuple[str, str, str | None]]:
    found = memory_problems(load_manifest(manifest(tmp, body, vram)))
    return [(p.severity, p.rule, p.profile) for p in found]


def test_lint_rules_budget_and_headroom(tmp_path: Path) -> None:
    body = (
        f"  big:\n    model: {tmp_path / 'g.gguf'}\n    ctx_size: 131072\n    swa_full: true\n"
        f"    metadata:\n{GEMMA4_BLOCK}"
    )
    assert rules(tmp_path, body) == [("error", "over-budget", "big")]
    # 20.38 GiB estimated: inside a 21 GiB budget's 512 MiB headroom, well inside 40 GiB
    small = body.replace("ctx_size: 131072\n    swa_full: true", "ctx_size: 262144")
    total = estimate(
        ModelSource.from_metadata(
            "g", load_manifest(manifest(tmp_path, small)).profiles["big"].metadata or {}
        ),
        LaunchOptions(ctx_size=262144),
        overhead=400 * 1024**2,
    ).gpu_total_bytes
    assert rules(tmp_path, small, vram=str(total + 100)) == [("warning", "in-headroom", "big")]
    assert rules(tmp_path, small, vram=str(total + 1024**3)) == []
    assert rules(tmp_path, small, vram=None) == []


def test_lint_rules_from_the_model(tmp_path: Path) -> None:
    odd = write_tiny_model(tmp_path / "odd.gguf", n_head=16, n_head_kv=4, head_dim=16)
    mla = write_tiny_model(tmp_path / "mla.gguf", arch="deepseek2")
    body = (
        f"  odd:\n    model: {odd}\n    cache_type_k: q8_0\n"
        f"  mla:\n    model: {mla}\n    cache_type_k: q8_0\n    cache_type_v: f16\n"
        f"  long:\n    model: {mla}\n    ctx_size: 8192\n"
    )
    found = memory_problems(load_manifest(manifest(tmp_path, body)))
    got = {(p.severity, p.rule, p.profile) for p in found}
    assert got == {
        ("error", "cache-block-size", "odd"),
        ("error", "mla-cache-types", "mla"),
        ("warning", "ctx-over-trained", "long"),
    }
    for p in found:
        assert p.file.endswith("profiles.yaml") and p.line is not None and p.hint


def test_a_command_line_on_a_machine_without_a_gpu_says_what_ram_it_takes(
    tiny: Path, llama_server_bin: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """This machine's llama-server lists no device: the GPU figures stand (the command line may be
    meant for another machine), and a note gives the RAM llama-server takes here."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setenv("LLMCTL_LLAMA_SERVER", str(llama_server_bin))
    code, out, _ = cli("estimate", "--json", "--", "-m", str(tiny), "-c", "512", "-ngl", "99")
    assert code == 0
    (obj,) = json.loads(out)
    ram = estimate(
        ModelSource.from_gguf(read_gguf(tiny)),
        parse_llama_args(["-m", str(tiny), "-c", "512"]).options,
        gpu=False,
        rules=binary_rules(str(llama_server_bin)),  # the rules the command used
    )
    [note] = [n for n in obj["notes"] if "no GPU" in n]
    assert "RAM" in note and obj["gpu_total_bytes"] > 0
    from llmctl.term import format_bytes

    assert format_bytes(ram.host_total_bytes) in note
    # an NVIDIA driver (nvidia-smi present, not even run) or no llama-server to ask: no note
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    for env in ({"LLMCTL_NVIDIA_SMI": str(smi)}, {"LLMCTL_LLAMA_SERVER": ""}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            code, out, _ = cli("estimate", "--json", "--", "-m", str(tiny), "-c", "512")
            assert code == 0 and not any("no GPU" in n for n in json.loads(out)[0]["notes"])
