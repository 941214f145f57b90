"""Fuzz the manifest loader: random YAML documents and random mutations of the bundled example.

Whatever the input: no traceback, exit 0, 1 or 2, and every error names its place.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmctl.cli import build_app
from llmctl.manifest.model import Profile

pytestmark = pytest.mark.fuzz


@pytest.fixture(autouse=True)
def bounded_memory() -> Iterator[None]:
    """Each fuzz test may grow this process by 2 GiB at most: an input that makes llmctl
    allocate without bound (nextn_predict_layers: 4615272737 once took 23 GB and the whole
    session with it) fails here as a MemoryError naming the input."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = size + 2 * 1024**3
    resource.setrlimit(
        resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
    )
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "profiles.yaml").read_text()
runner = CliRunner()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = [
    *Profile.model_fields,
    "version",
    "server",
    "gpu",
    "serve",
    "defaults",
    "profiles",
    "port",
    "host",
    "vram",
    "<<",
    "queue",
    "upstreams",
    "name",
    "url",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "on",
            "off",
            "no",
            "yes",
            "q8_0",
            "q4_0",
            "auto",
            "24GiB",
            "8K",
            "1.10",
            "~/m.gguf",
            "-c",
            "",
            "0x1F",
            "2024-01-01",
            "null",
        ]
    ),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6
        ),
    ),
    max_leaves=30,
)


def run_lint(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.yaml"
        path.write_bytes(content)
        result = runner.invoke(build_app(), ["lint", "manifest", str(path), "--json"])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{type(result.exception).__name__}: {result.exception}\n--- input ---\n{content!r}"
        )
        assert result.exit_code in (0, 1, 2), result.exit_code
        body: dict[str, Any] = json.loads(result.stdout)
        if result.exit_code == 2:
            assert body["ok"] is False
            assert str(path) in body["error"]["message"]
            return
        assert body["ok"] is (result.exit_code == 0)
        for problem in body["problems"]:
            assert problem["file"] == str(path)
            assert problem["message"]
            if problem["severity"] == "error" and problem["rule"] not in ("no-profiles",):
                assert problem["line"] is not None, problem


@FUZZ
@given(documents)
def test_random_documents(doc: Any) -> None:
    run_lint(yaml.safe_dump(doc, allow_unicode=True).encode())


@FUZZ
@given(st.data())
def test_mutations_of_the_bundled_example(data: st.DataObject) -> None:
    lines = EXAMPLE.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(
            st.sampled_from(
                ["delete", "duplicate", "indent", "dedent", "replace", "insert", "bytes", "swap"]
            )
        )
        i = data.draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][2:] if lines[i].startswith("  ") else lines[i]
        elif op == "replace" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            value = data.draw(
                st.sampled_from(
                    [
                        "on",
                        "no",
                        "0",
                        "-1",
                        "q9_0",
                        "[a, b]",
                        "{x: 1}",
                        "''",
                        "*nope",
                        "&a x",
                        "\t1",
                        "99999999999999999999",
                    ]
                )
            )
            lines[i] = f"{key}: {value}\n"
        elif op == "insert":
            lines.insert(i, data.draw(st.text(max_size=20)) + "\n")
        elif op == "bytes":
            raw = bytearray(lines[i].encode("utf-8", errors="surrogateescape"))
            pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
            lines[i] = raw.decode("utf-8", errors="surrogateescape")
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        if not lines:
            break
    run_lint("".join(lines).encode("utf-8", errors="surrogateescape"))


META_KEYS = [
    "general.architecture",
    "block_count",
    "embedding_length",
    "context_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.key_length_swa",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "attention.shared_kv_layers",
    "vocab_size",
    "feed_forward_length",
    "weights_bytes",
    "nextn_predict_layers",
    "attention.key_length_mla",
    "attention.value_length_mla",
    "ssm.inner_size",
    "ssm.state_size",
    "ssm.conv_kernel",
    "ssm.group_count",
    "wkv.head_size",
    "shortconv.l_cache",
    "full_attention_interval",
    "general.size",
]
ARCHS = [
    "llama",
    "gemma2",
    "gemma3",
    "gemma3n",
    "gemma4",
    "cohere2",
    "deepseek2",
    "mamba",
    "rwkv6",
    "lfm2",
    "granitehybrid",
    "jamba",
    "qwen3next",
    "gpt-oss",
    "llama4",
    "bert",
    "nope",
    "",
]
meta_values = st.one_of(
    scalars,
    st.sampled_from(ARCHS),
    st.integers(0, 64),
    st.lists(st.one_of(st.integers(-2, 16), st.booleans(), st.text(max_size=3)), max_size=40),
)


@FUZZ
@example({"nextn_predict_layers": 4615272737.0}, "gemma2", 1)  # once 23 GB: a list per layer
@given(
    st.dictionaries(st.sampled_from(META_KEYS), meta_values, max_size=12),
    st.sampled_from(ARCHS),
    st.integers(1, 40),
)
def test_random_metadata_blocks(meta: dict[str, Any], arch: str, layers: int) -> None:
    meta.setdefault("general.architecture", arch)
    meta.setdefault("block_count", layers)
    meta.setdefault("embedding_length", 256)
    doc = {
        "version": 1,
        "gpu": {"vram": "24GiB"},
        "profiles": {"p": {"model": "/nonexistent/m.gguf", "metadata": meta}},
    }
    content = yaml.safe_dump(doc).encode()
    run_lint(content)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.yaml"
        path.write_bytes(content)
        for args in (["estimate", "p", "--json"], ["fit", "p", "--json"]):
            result = runner.invoke(build_app(), [*args, "--manifest", str(path)])
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"{args[0]}: {type(result.exception).__name__}: {result.exception}\n{meta}"
            )
            assert result.exit_code in (0, 1, 2)
