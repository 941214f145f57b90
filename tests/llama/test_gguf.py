"""The GGUF reader: every value type, v2/v3, both byte orders, split models, and hostile files."""

from __future__ import annotations

import contextlib
import random
import struct
from pathlib import Path

import pytest

from llmctl.errors import GGUFError
from llmctl.llama.gguf import (
    MAX_DECODED_ARRAY,
    T_ARRAY,
    T_BOOL,
    T_FLOAT32,
    T_FLOAT64,
    T_INT8,
    T_INT16,
    T_INT32,
    T_INT64,
    T_STRING,
    T_UINT8,
    T_UINT16,
    T_UINT32,
    T_UINT64,
    SkippedArray,
    ggml_type,
    read_gguf,
    split_paths,
)
from llmctl.llama.gguf_writer import Tensor, Value, array, string, u32, write_gguf
from llmctl.testing.testmodels import write_tiny_model

EVERY_TYPE = [
    ("t.u8", Value(T_UINT8, 200)),
    ("t.i8", Value(T_INT8, -100)),
    ("t.u16", Value(T_UINT16, 60000)),
    ("t.i16", Value(T_INT16, -30000)),
    ("t.u32", Value(T_UINT32, 4_000_000_000)),
    ("t.i32", Value(T_INT32, -2_000_000_000)),
    ("t.f32", Value(T_FLOAT32, 1.5)),
    ("t.bool", Value(T_BOOL, True)),
    ("t.str", string("héllo")),
    ("t.u64", Value(T_UINT64, 2**63 + 5)),
    ("t.i64", Value(T_INT64, -(2**40))),
    ("t.f64", Value(T_FLOAT64, 2.25)),
    ("t.arr_i32", array(T_INT32, [1, -2, 3])),
    ("t.arr_bool", array(T_BOOL, [True, False, True])),
    ("t.arr_str", array(T_STRING, ["a", "bc", ""])),
    ("t.arr_f64", array(T_FLOAT64, [0.5, 1.5])),
    ("t.nested", array(T_ARRAY, [array(T_UINT8, [1, 2]), array(T_UINT8, [3])])),
]
EXPECTED = {
    "t.u8": 200,
    "t.i8": -100,
    "t.u16": 60000,
    "t.i16": -30000,
    "t.u32": 4_000_000_000,
    "t.i32": -2_000_000_000,
    "t.f32": 1.5,
    "t.bool": True,
    "t.str": "héllo",
    "t.u64": 2**63 + 5,
    "t.i64": -(2**40),
    "t.f64": 2.25,
    "t.arr_i32": [1, -2, 3],
    "t.arr_bool": [True, False, True],
    "t.arr_str": ["a", "bc", ""],
    "t.arr_f64": [0.5, 1.5],
    "t.nested": [[1, 2], [3]],
}
F32 = ggml_type("f32")


def _small(path: Path, **kw: object) -> Path:
    tensors = [
        Tensor("a.weight", (64, 3), ggml_type("f16")),
        Tensor("b.weight", (64, 2), ggml_type("q8_0")),
        Tensor("c", (5,), F32),
    ]
    meta = [("general.architecture", string("llama")), *EVERY_TYPE]
    return write_gguf(path, meta, tensors, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("big_endian", [False, True])
def test_every_value_type_both_versions_and_byte_orders(
    tmp_path: Path, version: int, big_endian: bool
) -> None:
    path = _small(tmp_path / "m.gguf", version=version, big_endian=big_endian)
    g = read_gguf(path)
    assert g.version == version
    assert g.byte_order == ("big" if big_endian else "little")
    for key, value in EXPECTED.items():
        assert g.metadata[key] == value, key
    assert [(t.name, t.shape, t.type.name) for t in g.tensors] == [
        ("a.weight", (64, 3), "f16"),
        ("b.weight", (64, 2), "q8_0"),
        ("c", (5,), "f32"),
    ]
    assert [t.nbytes for t in g.tensors] == [64 * 3 * 2, 2 * 2 * 34, 20]
    assert g.data_offset % 32 == 0


def test_tensor_table_matches_gguf_py(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = write_tiny_model(tmp_path / "m.gguf", arch="deepseek2", weight_type="q8_0")
    ours = read_gguf(path)
    theirs = gguf.GGUFReader(str(path))
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert a.name == b.name
        assert a.shape == tuple(int(x) for x in b.shape)
        assert a.nbytes == int(b.n_bytes)
        assert ours.data_offset + a.offset == int(b.data_offset)
    assert ours.metadata["deepseek2.attention.kv_lora_rank"] == 192


def test_long_arrays_are_skipped_with_their_length(tmp_path: Path) -> None:
    n = MAX_DECODED_ARRAY + 10
    meta = [
        ("tokenizer.ggml.tokens", array(T_STRING, [f"t{i}" for i in range(n)])),
        ("tokenizer.ggml.scores", array(T_FLOAT32, [0.0] * n)),
        ("short", array(T_INT32, list(range(30)))),
        ("after", u32(7)),
    ]
    g = read_gguf(write_gguf(tmp_path / "v.gguf", meta, []))
    assert g.metadata["tokenizer.ggml.tokens"] == SkippedArray(T_STRING, n)
    assert len(g.metadata["tokenizer.ggml.scores"]) == n
    assert g.metadata["short"] == list(range(30))
    assert g.metadata["after"] == 7


def test_split_model_reads_every_part(tmp_path: Path) -> None:
    def part(i: int, tensors: list[Tensor]) -> Path:
        meta = [
            ("general.architecture", string("llama")),
            ("split.no", Value(T_UINT16, i)),
            ("split.count", Value(T_UINT16, 3)),
            ("split.tensors.count", Value(T_INT32, 4)),
        ]
        return write_gguf(tmp_path / f"m-{i + 1:05d}-of-00003.gguf", meta, tensors)

    part(0, [Tensor("a", (8,), F32), Tensor("b", (8,), F32)])
    part(1, [Tensor("c", (16,), F32)])
    last = part(2, [Tensor("d", (32,), F32)])
    g = read_gguf(tmp_path / "m-00001-of-00003.gguf")
    assert [t.name for t in g.tensors] == ["a", "b", "c", "d"]
    assert [t.split for t in g.tensors] == [0, 0, 1, 2]
    assert g.tensor_bytes == 4 * (8 + 8 + 16 + 32)
    assert len(g.paths) == 3
    # any part names the whole model
    assert [t.name for t in read_gguf(last).tensors] == ["a", "b", "c", "d"]
    last.unlink()
    with pytest.raises(GGUFError, match="part 3 of the split model"):
        read_gguf(tmp_path / "m-00001-of-00003.gguf")


def test_split_paths() -> None:
    assert split_paths(Path("/x/model.gguf")) is None
    parts = split_paths(Path("/x/Qwen-Q4_K_M-00002-of-00002.gguf"))
    assert parts == [
        Path("/x/Qwen-Q4_K_M-00001-of-00002.gguf"),
        Path("/x/Qwen-Q4_K_M-00002-of-00002.gguf"),
    ]


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GGML" + b"\0" * 40, "not a GGUF file"),
        (b"GGUF" + struct.pack("<I", 1) + b"\0" * 40, "unsupported GGUF version 1"),
        (_header(0, 2**62), "more than the file holds"),
        (_header(2**62, 0), "more than the file holds"),
        (_header(0, 1) + struct.pack("<Q", 2**60) + b"k" * 20, "truncated"),
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**61),
            "more than the file holds",
        ),
        (
            _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**61),
            "more than the file holds",
        ),
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77), "unknown value type"),
        (
            _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 5) + b"\0" * 64,
            "5 dimensions",
        ),
        (
            _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 4, 99, 0),
            "unknown ggml type 99",
        ),
        (
            _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 33, 8, 0),
            "not a multiple",
        ),
    ],
    ids=[
        "empty",
        "magic",
        "v1",
        "kv-count",
        "tensor-count",
        "key-length",
        "array-count",
        "string-array-count",
        "value-type",
        "dims",
        "ggml-type",
        "block",
    ],
)
def test_hostile_headers_give_clear_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message) as info:
        read_gguf(path)
    assert str(path) in info.value.message


def test_millions_of_nested_empty_arrays_are_refused_before_they_are_walked(
    tmp_path: Path,
) -> None:
    n = 1_000_000
    empty = struct.pack("<IQ", T_UINT8, 0)
    data = _header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", T_ARRAY, T_ARRAY, n)
    path = tmp_path / "nested.gguf"
    path.write_bytes(data + empty * n)
    with pytest.raises(GGUFError, match="nested arrays in 'k' hold more than 65536 items"):
        read_gguf(path)
    inner = struct.pack("<IQ", T_UINT8, 70_000) + b"\0" * 70_000  # one inner array, many items
    path.write_bytes(
        _header(0, 1)
        + struct.pack("<Q", 1)
        + b"k"
        + struct.pack("<IIQ", T_ARRAY, T_ARRAY, 1)
        + inner
    )
    with pytest.raises(GGUFError, match="more than 65536 items"):
        read_gguf(path)


def test_tensor_data_cut_short_is_gguf_truncated(tmp_path: Path) -> None:
    from llmctl.llama.gguf import GGUFTruncated

    good = _small(tmp_path / "good.gguf").read_bytes()
    g = read_gguf(tmp_path / "good.gguf")
    path = tmp_path / "cut.gguf"
    end = g.data_offset + max(t.offset + t.nbytes for t in g.tensors)
    for cut in (g.data_offset, end - 1):
        path.write_bytes(good[:cut])
        with pytest.raises(GGUFTruncated, match="cut short") as info:
            read_gguf(path)
        assert str(path) in info.value.message and f"the file has {cut} bytes" in info.value.message


def test_every_truncation_and_random_corruption_is_a_gguf_error(tmp_path: Path) -> None:
    good = _small(tmp_path / "good.gguf").read_bytes()
    g = read_gguf(tmp_path / "good.gguf")
    header = good[: g.data_offset]
    path = tmp_path / "cut.gguf"
    for cut in range(len(header) - 1):
        path.write_bytes(header[:cut])
        try:
            read_gguf(path)
        except GGUFError:
            pass
        else:  # a cut inside the alignment padding leaves a whole header
            assert cut >= g.data_offset - g.alignment, cut
    rng = random.Random(3)
    for _ in range(400):
        damaged = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        with contextlib.suppress(GGUFError):  # anything else escaping is a bug
            read_gguf(path)


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
