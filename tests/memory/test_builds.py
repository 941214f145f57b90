"""The estimate by llama.cpp build (llmctl.memory.builds): each rule against figures computed by
hand at real shapes (Qwen2.5-7B's dimensions, two layers), where the build comes from (the
flag, the manifest, the binary) and the error paths of `--llama-build` and `server.llama_build`."""

from __future__ import annotations

import itertools
import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.llama.gguf import read_gguf
from llmctl.memory.builds import RULES, fa_supported, rules_for
from llmctl.memory.estimate import ModelSource, estimate, vocab_size
from llmctl.memory.options import LaunchOptions
from llmctl.testing.realshapes import shape
from llmctl.testing.testmodels import write_tiny_model

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(build_app(), list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def real_shape(name: str, **extra: Any) -> ModelSource:
    """A `metadata:` block with the dimensions of realshapes' `name` (a llama-architecture one)."""
    o = shape(name).overrides
    meta = {
        "general.architecture": "llama",
        "block_count": o["n_layer"],
        "context_length": o["n_ctx_train"],
        "embedding_length": o["n_embd"],
        "attention.head_count": o["n_head"],
        "attention.head_count_kv": o["n_head_kv"],
        "attention.key_length": o["head_dim"],
        "attention.value_length": o["head_dim"],
        "feed_forward_length": o["n_ff"],
        "vocab_size": shape(name).n_vocab,
        "weights_bytes": 1024**3,
        **extra,
    }
    return ModelSource.from_metadata(f"{name}.gguf", meta)


QWEN = "qwen2.5-7b"  # n_embd 3584, 28 heads (4 KV) of 128, n_ff 18944, vocab 152064
OPTS = LaunchOptions(ctx_size=4096, parallel=1, ubatch_size=512)
# by hand: 512 tokens x 4096 cells of f16 masks; the FFN layer 4 x 512 x (3 x 3584 + 3584 + 3 x 18944)
MASKS = 512 * 4096 * 2
FFN = 4 * 512 * (3 * 3584 + 28 * 128 + 3 * 18944)


def test_the_shape_is_qwen_25_7b() -> None:
    s = shape(QWEN)
    assert (s.overrides["n_embd"], s.overrides["n_ff"], s.n_vocab) == (3584, 18944, 152064)


def test_pinned_build_reserves_one_output_per_slot() -> None:
    est = estimate(real_shape(QWEN), OPTS, gpu=False, rules=rules_for(11312))
    assert est.compute is not None
    assert est.compute.outputs == 4 * 152064  # one slot, one output
    assert est.compute.inputs == 0
    assert est.compute_bytes == MASKS + FFN == 149_946_368


def test_builds_before_b9464_reserve_logits_for_the_whole_ubatch() -> None:
    for build in (9093, 9463):
        est = estimate(real_shape(QWEN), OPTS, gpu=False, rules=rules_for(build))
        assert est.compute is not None
        # the logits of 512 tokens and the normed hidden state they are computed from
        assert est.compute.outputs == 4 * 512 * (152064 + 3584) == 318_767_104
        # they outgrow the widest layer: 304 MiB of them
        assert est.compute_bytes == MASKS + 318_767_104 == 322_961_408
    assert estimate(real_shape(QWEN), OPTS, rules=rules_for(9464)).compute_bytes == 149_946_368


def test_the_ubatch_logits_follow_the_ubatch_and_the_context() -> None:
    small = LaunchOptions(ctx_size=256, parallel=1, ubatch_size=512)
    est = estimate(real_shape(QWEN), small, gpu=False, rules=rules_for(9093))
    assert est.compute is not None  # n_ctx < n_ubatch: 256 outputs
    assert est.compute.outputs == 4 * 256 * (152064 + 3584)


def test_b11401_and_newer_add_the_mixed_input_path() -> None:
    mixed = 4 * 3584 * 512  # the copy set_rows writes into (measured on b11434)
    for build in (11401, 11434, None):
        est = estimate(real_shape(QWEN), OPTS, gpu=False, rules=rules_for(build))
        assert est.compute is not None and est.compute.inputs == mixed == 7_340_032
        assert est.compute_bytes == MASKS + FFN + mixed
    assert estimate(real_shape(QWEN), OPTS, rules=rules_for(11400)).compute_bytes == MASKS + FFN


def test_before_b9415_the_f32_mask_and_its_f16_cast_live_together(tmp_path: Path) -> None:
    """b9093: the mask is made f32 and cast to f16 for flash attention; until the cast both
    and the token inputs are alive (measured: 3x masks as the context grows; exact on the
    256-wide test model at 4K to 32K). From b9415 the mask is made f16 directly."""
    assert rules_for(9409).mask_cast and rules_for(9093).mask_cast
    assert not rules_for(9415).mask_cast and not rules_for(None).mask_cast
    opts = LaunchOptions(ctx_size=32768, parallel=1, flash_attn="on")
    src = ModelSource.from_gguf(read_gguf(write_tiny_model(tmp_path / "t.gguf", n_ff=1024)))
    old = estimate(src, opts, gpu=False, rules=rules_for(9093))
    new = estimate(src, opts, gpu=False, rules=rules_for(9415))
    assert old.compute is not None and new.compute is not None
    masks = 512 * 32768 * 2
    assert old.compute.where == "mask cast" and old.compute.layer == 2 * masks + 4 * 512 * 5 * 256
    assert new.compute.where == "ffn"
    # without flash attention the mask is f32 in every build: no cast
    off = estimate(src, replace(opts, flash_attn="off"), gpu=False, rules=rules_for(9093))
    assert off.compute is not None and off.compute.where != "mask cast"


def test_an_architecture_without_mixed_batches_has_no_mixed_input() -> None:
    src = real_shape(QWEN)
    src.metadata = {k.replace("llama.", "cogvlm."): v for k, v in {**src.metadata}.items()} | {
        "general.architecture": "cogvlm"
    }
    est = estimate(src, OPTS, gpu=False, rules=rules_for(11434))
    assert est.compute is not None and est.compute.inputs == 0


def test_flash_attn_auto_per_backend_and_head_shape() -> None:
    # (K head, V head, GQA ratio)
    assert fa_supported("cpu", [(48, 48, 1)], "f16", "f16")
    assert fa_supported("cuda", [(128, 128, 7)], "f16", "f16")
    assert not fa_supported("cuda", [(48, 48, 1)], "f16", "f16")  # no CUDA kernel for 48
    assert fa_supported("metal", [(48, 48, 1)], "f16", "f16")
    assert fa_supported("cuda", [(576, 512, 16)], "f16", "f16")  # MLA, with the GQA kernel
    assert not fa_supported("cuda", [(576, 512, 1)], "f16", "f16")
    assert not fa_supported("cuda", [(192, 128, 4)], "f16", "f16")  # needs a GQA ratio of 8
    assert not fa_supported("cuda", [(128, 128, 7)], "iq4_nl", "iq4_nl")
    assert not fa_supported("metal", [(128, 128, 7)], "q8_0", "f16")  # K and V types differ
    assert fa_supported(None, [(48, 48, 1)], "f16", "f16")  # unknown backend: as the CPU


def test_flash_attn_auto_off_on_cuda_sizes_the_graph_without_it() -> None:
    src = real_shape(QWEN, **{"attention.key_length": 48, "attention.value_length": 48})
    cuda = estimate(src, OPTS, rules=rules_for(11312), backend="cuda")
    cpu = estimate(src, OPTS, rules=rules_for(11312), backend="cpu")
    assert cuda.compute is not None and cpu.compute is not None
    assert (cuda.compute.flash_attn, cpu.compute.flash_attn) == (False, True)
    # without flash attention: f32 masks and the KQ scores (4096 cells x 28 heads x 512 tokens)
    assert cuda.compute.masks == 512 * 4096 * 4
    kq = 4096 * 28 * 512 * 4 + 4 * 512 * (5 * 3584 + 2 * 4 * 48)
    ffn = 4 * 512 * (3 * 3584 + 28 * 48 + 3 * 18944)
    assert cuda.compute.layer == max(kq, ffn) == kq
    assert cuda.compute_bytes == 512 * 4096 * 4 + kq
    on = estimate(src, LaunchOptions(ctx_size=4096, parallel=1, flash_attn="on"), backend="cuda")
    assert on.compute is not None and on.compute.flash_attn  # asked for: as asked


def test_every_rule_names_its_builds_and_change() -> None:
    names = {r.name for r in RULES}
    assert names >= {"logits", "mixed_input", "flash_attn_auto", "slot_tokens"}
    for name in names:
        ranges = sorted((r.since, r.until) for r in RULES if r.name == name)
        # the ranges of one rule cover every build, without gaps or overlaps
        assert ranges[0][0] == 0 and ranges[-1][1] is None
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(r.change and r.checked for r in RULES)
    assert rules_for(0).build is None  # a build that reports 0 does not know its number


def test_estimate_json_and_text_say_which_rules(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch="llama")
    code, out, _ = cli(
        "estimate", "--llama-build", "b9093", "--json", "--", "-m", str(model), "-c", "512"
    )
    assert code == 0, out
    got = json.loads(out)[0]["llama_build"]
    assert (got["build"], got["source"], got["logits"]) == (9093, "flag", "ubatch")
    code, out, _ = cli("estimate", "--llama-build", "11434", "--", "-m", str(model))
    assert code == 0 and "rules: llama.cpp b11434 rules (--llama-build)" in out


def test_manifest_llama_build_names_the_rules(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch="llama")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            server: {{llama_build: 9093}}
            profiles:
              small: {{model: {model}, ctx_size: 512}}
            """
        )
    )
    code, out, _ = cli("estimate", "small", "--manifest", str(path), "--json")
    assert code == 0, out
    got = json.loads(out)[0]
    assert (got["llama_build"]["build"], got["llama_build"]["source"]) == (9093, "manifest")
    n_vocab = vocab_size(ModelSource.from_gguf(read_gguf(model)))
    n_embd = read_gguf(model).metadata["llama.embedding_length"]
    assert got["compute"]["outputs"] == 4 * got["compute"]["n_tokens"] * (n_vocab + n_embd)
    # the flag wins over the manifest
    code, out, _ = cli(
        "estimate", "small", "--manifest", str(path), "--json", "--llama-build", "11312"
    )
    assert json.loads(out)[0]["llama_build"]["source"] == "flag"
    code, out, _ = cli("estimate", "small", "--manifest", str(path))
    assert "rules: llama.cpp b9093 rules (server.llama_build)" in out


@pytest.mark.parametrize("value", ["abc", "0", "-3", "b", "11312.5"])
def test_a_bad_llama_build_flag_is_a_usage_error(tmp_path: Path, value: str) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch="llama")
    code, out, err = cli("estimate", f"--llama-build={value}", "--", "-m", str(model))
    assert code == 2, (out, err)
    assert "--llama-build" in out + err and "not a llama.cpp build number" in out + err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5"])
def test_a_bad_llama_build_field_is_a_positioned_error(tmp_path: Path, value: str) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch="llama")
    path = tmp_path / "profiles.yaml"
    path.write_text(
        f"version: 1\nserver:\n  llama_build: {value}\nprofiles:\n  small: {{model: {model}}}\n"
    )
    code, out, _ = cli("lint", "manifest", str(path), "--json")
    assert code == 1
    problems = [p for p in json.loads(out)["problems"] if p["severity"] == "error"]
    assert problems, out
    assert (problems[0]["line"], problems[0]["column"]) == (3, 16), problems[0]
    assert "llama_build" in json.dumps(problems[0])


def test_the_first_gpu_of_the_manifest_resolves_flash_attn_auto(tmp_path: Path) -> None:
    """A profile for a CUDA card with 48-wide heads: auto resolves to off there (no CUDA kernel),
    on where the first device is Metal, whose kernels include 48."""
    meta = textwrap.indent(
        textwrap.dedent(
            """\
            general.architecture: llama
            block_count: 2
            context_length: 32768
            embedding_length: 3584
            attention.head_count: 28
            attention.head_count_kv: 4
            attention.key_length: 48
            attention.value_length: 48
            feed_forward_length: 18944
            vocab_size: 152064
            weights_bytes: 1GiB
            """
        ),
        "      ",
    )
    for device, on in (("CUDA0", False), ("Metal", True)):
        path = tmp_path / f"{device}.yaml"
        path.write_text(
            "version: 1\nserver: {llama_build: 11312}\n"
            f"gpu:\n  - {{name: {device}, vram: 24GiB}}\n"
            f"profiles:\n  p:\n    model: /nowhere/p.gguf\n    ctx_size: 4096\n"
            f"    parallel: 1\n    metadata:\n{meta}"
        )
        code, out, _ = cli("estimate", "p", "--manifest", str(path), "--json")
        assert code == 0, out
        got = json.loads(out)[0]
        assert got["compute"]["flash_attn"] is on, device
        code, out, _ = cli("estimate", "p", "--manifest", str(path))
        assert f"flash_attn auto ({'on' if on else 'off'})" in out


def test_llama_build_is_refused_for_hub_models() -> None:
    code, out, err = cli("estimate", "hf://org/repo-GGUF", "--llama-build", "9093")
    assert code == 2 and "not to hub models" in out + err
