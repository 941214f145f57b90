"""GGUF writer: metadata and tensors to a file llama-server loads (the reader is llama/gguf.py).

Written by hand with `struct`, no numpy and no `gguf` package. Tensor data is random (or given);
`llmctl.testing.testmodels` builds whole tiny models with it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.llama.gguf import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    SCALAR_FORMATS,
    T_ARRAY,
    T_BOOL,
    T_FLOAT32,
    T_STRING,
    T_UINT32,
    GGMLType,
)


@dataclass(frozen=True)
class Value:
    """A metadata value with its GGUF type; arrays give `item_type`."""

    type: int
    value: Any
    item_type: int | None = None


def u32(v: int) -> Value:
    return Value(T_UINT32, v)


def f32(v: float) -> Value:
    return Value(T_FLOAT32, v)


def string(v: str) -> Value:
    return Value(T_STRING, v)


def boolean(v: bool) -> Value:
    return Value(T_BOOL, v)


def array(item_type: int, items: Sequence[Any]) -> Value:
    return Value(T_ARRAY, list(items), item_type)


def _encode_str(s: str, e: str = "<") -> bytes:
    raw = s.encode()
    return struct.pack(e + "Q", len(raw)) + raw


def _encode_value(v: Value, e: str = "<") -> bytes:
    if v.type == T_STRING:
        return _encode_str(v.value, e)
    if v.type == T_ARRAY:
        assert v.item_type is not None
        head = struct.pack(e + "IQ", v.item_type, len(v.value))
        if v.item_type == T_STRING:
            return head + b"".join(_encode_str(s, e) for s in v.value)
        if v.item_type == T_ARRAY:
            return head + b"".join(_encode_value(item, e) for item in v.value)
        return head + struct.pack(f"{e}{len(v.value)}{SCALAR_FORMATS[v.item_type]}", *v.value)
    return struct.pack(e + SCALAR_FORMATS[v.type], v.value)


@dataclass(frozen=True)
class Tensor:
    """A tensor to write: `shape` in ggml `ne` order (fastest dimension first)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    fill: str = "random"  # "random", "ones", "zeros", "neg"

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n // self.type.block_size * self.type.type_size


class _Pool:
    """Random bytes per type, tiled: generating every weight one by one would be slow."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 1 << 14
        values = [rng.uniform(-0.08, 0.08) for _ in range(n)]
        self.f32 = struct.pack(f"<{n}f", *values)
        self.f16 = struct.pack(f"<{n}e", *values)
        # quantized blocks: a small fixed scale (random bytes could make it inf or NaN)
        q8 = [
            struct.pack("<e", 0.002) + bytes(rng.randrange(256) for _ in range(32))
            for _ in range(64)
        ]
        self.q8_0 = b"".join(q8)
        q4 = [
            struct.pack("<e", 0.01) + bytes(rng.randrange(256) for _ in range(16))
            for _ in range(64)
        ]
        self.q4_0 = b"".join(q4)

    def data(self, t: Tensor) -> bytes:
        n = t.nbytes
        name = t.type.name
        if t.fill in ("ones", "neg", "zeros"):
            if name not in ("f32", "f16"):
                raise ValueError(f"{t.name}: fill {t.fill} needs f32 or f16")
            v = {"ones": 1.0, "neg": -1.0, "zeros": 0.0}[t.fill]
            fmt = "f" if name == "f32" else "e"
            return struct.pack("<" + fmt, v) * (n // struct.calcsize(fmt))
        pools = {"f32": self.f32, "f16": self.f16, "q8_0": self.q8_0, "q4_0": self.q4_0}
        pool = pools.get(name)
        if pool is None:
            raise ValueError(f"{t.name}: cannot write random {name} data")
        reps = n // len(pool) + 1
        return (pool * reps)[:n]


def write_gguf(
    path: Path,
    metadata: Iterable[tuple[str, Value]],
    tensors: Sequence[Tensor],
    *,
    seed: int = 0,
    alignment: int = DEFAULT_ALIGNMENT,
    version: int = 3,
    big_endian: bool = False,
    sparse: bool = False,
) -> Path:
    """Write a GGUF file (v3 by default) with the given metadata and random tensor data.

    Nested arrays are `array(T_ARRAY, [array(...), ...])`. Big-endian files get big-endian
    headers; their tensor data is written as is (it is never read by the tests). `sparse`
    writes the header only and extends the file to its full size with a hole (zero weights,
    no disk used, any tensor type): a multi-GB file for reading headers, not for loading.
    """
    e = ">" if big_endian else "<"
    meta = list(metadata)
    head = bytearray(GGUF_MAGIC)
    head += struct.pack(e + "IQQ", version, len(tensors), len(meta))
    for key, value in meta:
        head += _encode_str(key, e)
        head += struct.pack(e + "I", value.type)
        head += _encode_value(value, e)
    offset = 0
    offsets = []
    for t in tensors:
        offsets.append(offset)
        offset += (t.nbytes + alignment - 1) // alignment * alignment
    for t, off in zip(tensors, offsets, strict=True):
        head += _encode_str(t.name, e)
        head += struct.pack(f"{e}I{len(t.shape)}QIQ", len(t.shape), *t.shape, t.type.id, off)
    pad = (-len(head)) % alignment
    head += b"\0" * pad
    pool = _Pool(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(head)
        if sparse:
            fh.truncate(len(head) + offset)
        for t in [] if sparse else tensors:
            data = pool.data(t)
            fh.write(data)
            fh.write(b"\0" * ((-len(data)) % alignment))
    tmp.replace(path)
    return path
