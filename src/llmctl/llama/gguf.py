"""A fast, defensive GGUF reader: header, metadata and tensor table, never the tensor data.

Large arrays (the tokenizer's tokens, scores, merges) are walked past, not decoded: they come back
as `SkippedArray(item_type, length)`. Every length field is checked against the bytes that are left
before anything is allocated, so a hostile or truncated file gives a `GGUFError`, never a huge
allocation. A file whose tensor table reaches past its end (an interrupted download) gives a
`GGUFTruncated`. GGUF v2 and v3, little- and big-endian, split models (`-00001-of-0000N.gguf`).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from llmctl.errors import GGUFError


class GGUFTruncated(GGUFError):
    """The header reads, but the tensor data it describes is not all in the file."""


GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Arrays longer than this are not decoded (per-layer arrays are at most a few hundred long).
MAX_DECODED_ARRAY = 4096
# Items of nested arrays (arrays of arrays) in one file, at most: llama.cpp reads no nested arrays,
# and each costs a Python object, so a file of millions of empty ones is refused before it is walked.
MAX_NESTED_ITEMS = 65536

# GGUF metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32 = 0, 1, 2, 3, 4, 5, 6
T_BOOL, T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 7, 8, 9, 10, 11, 12

VALUE_TYPE_NAMES = {
    T_UINT8: "uint8",
    T_INT8: "int8",
    T_UINT16: "uint16",
    T_INT16: "int16",
    T_UINT32: "uint32",
    T_INT32: "int32",
    T_FLOAT32: "float32",
    T_BOOL: "bool",
    T_STRING: "string",
    T_ARRAY: "array",
    T_UINT64: "uint64",
    T_INT64: "int64",
    T_FLOAT64: "float64",
}
# struct format and size of each fixed-size value type
SCALAR_FORMATS = {
    T_UINT8: "B",
    T_INT8: "b",
    T_UINT16: "H",
    T_INT16: "h",
    T_UINT32: "I",
    T_INT32: "i",
    T_FLOAT32: "f",
    T_BOOL: "?",
    T_UINT64: "Q",
    T_INT64: "q",
    T_FLOAT64: "d",
}
_SCALAR_SIZES = {t: struct.calcsize("<" + f) for t, f in SCALAR_FORMATS.items()}


class GGMLType(NamedTuple):
    """A ggml tensor type: `block_size` elements take `type_size` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int

    def row_bytes(self, n: int) -> int:
        """Bytes of `n` elements (ggml_row_size)."""
        return self.type_size * n // self.block_size


GGML_TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        GGMLType(0, "f32", 1, 4),
        GGMLType(1, "f16", 1, 2),
        GGMLType(2, "q4_0", 32, 18),
        GGMLType(3, "q4_1", 32, 20),
        GGMLType(6, "q5_0", 32, 22),
        GGMLType(7, "q5_1", 32, 24),
        GGMLType(8, "q8_0", 32, 34),
        GGMLType(9, "q8_1", 32, 36),
        GGMLType(10, "q2_K", 256, 84),
        GGMLType(11, "q3_K", 256, 110),
        GGMLType(12, "q4_K", 256, 144),
        GGMLType(13, "q5_K", 256, 176),
        GGMLType(14, "q6_K", 256, 210),
        GGMLType(15, "q8_K", 256, 292),
        GGMLType(16, "iq2_xxs", 256, 66),
        GGMLType(17, "iq2_xs", 256, 74),
        GGMLType(18, "iq3_xxs", 256, 98),
        GGMLType(19, "iq1_s", 256, 50),
        GGMLType(20, "iq4_nl", 32, 18),
        GGMLType(21, "iq3_s", 256, 110),
        GGMLType(22, "iq2_s", 256, 82),
        GGMLType(23, "iq4_xs", 256, 136),
        GGMLType(24, "i8", 1, 1),
        GGMLType(25, "i16", 1, 2),
        GGMLType(26, "i32", 1, 4),
        GGMLType(27, "i64", 1, 8),
        GGMLType(28, "f64", 1, 8),
        GGMLType(29, "iq1_m", 256, 56),
        GGMLType(30, "bf16", 1, 2),
        GGMLType(34, "tq1_0", 256, 54),
        GGMLType(35, "tq2_0", 256, 66),
        GGMLType(39, "mxfp4", 32, 17),
        GGMLType(40, "nvfp4", 64, 36),
        GGMLType(41, "q1_0", 128, 18),
        GGMLType(42, "q2_0", 64, 18),
    )
}
GGML_TYPES_BY_NAME: dict[str, GGMLType] = {t.name.lower(): t for t in GGML_TYPES.values()}


def ggml_type(name_or_id: str | int) -> GGMLType:
    """The ggml type for a name such as `q8_0` (case-insensitive) or a numeric id."""
    if isinstance(name_or_id, int):
        found = GGML_TYPES.get(name_or_id)
    else:
        found = GGML_TYPES_BY_NAME.get(name_or_id.lower())
    if found is None:
        raise KeyError(name_or_id)
    return found


@dataclass(frozen=True)
class SkippedArray:
    """An array too long to decode (tokens, scores, merges): its item type and length only."""

    item_type: int
    length: int

    def __len__(self) -> int:
        return self.length


class TensorInfo(NamedTuple):
    """One entry of the tensor table. `shape` is ggml's `ne` order (fastest dimension first)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int  # relative to the data section of its file
    split: int = 0  # index of the file holding it (0 for single-file models)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.n_elements // self.type.block_size * self.type.type_size


@dataclass
class GGUFFile:
    """What a GGUF header says. For split models, metadata is the first file's and `tensors` spans all files."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    file_size: int = 0
    byte_order: str = "little"
    paths: list[Path] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else ""

    def tensor(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Short(Exception):
    """The buffer holds only a prefix of the file and the header goes on past it."""

    def __init__(self, want: int) -> None:
        super().__init__(want)
        self.want = want


class _Reader:
    """Bounds-checked cursor over a buffer; every failure names the file and what was being read.

    `avail` is how much of the file's `size` bytes the buffer holds (all of it for a mapped file);
    reading past it raises _Short, so a caller with a prefix can fetch more and parse again.
    """

    __slots__ = ("avail", "buf", "e", "nested_left", "path", "pos", "size")

    def __init__(self, buf: Any, size: int, path: Path, endian: str, avail: int) -> None:
        self.buf = buf
        self.size = size
        self.avail = avail
        self.path = path
        self.pos = 0
        self.e = endian
        self.nested_left = MAX_NESTED_ITEMS

    def fail(self, what: str) -> GGUFError:
        return GGUFError(
            f"{self.path}: not a readable GGUF file: {what} (at byte {self.pos} of {self.size})",
            hint="the file is corrupt or truncated; download it again or check its checksum",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated while reading {what} ({n} bytes needed)")
        if self.pos + n > self.avail:
            raise _Short(self.pos + n)

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from(self.e + "I", self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from(self.e + "Q", self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        fmt = SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            size = _SCALAR_SIZES[vtype]
            self.need(size, f"the value of {key!r}")
            (v,) = struct.unpack_from(self.e + fmt, self.buf, self.pos)
            self.pos += size
            return v
        if vtype == T_STRING:
            return self.string(f"the value of {key!r}")
        if vtype == T_ARRAY:
            return self.array(key, depth)
        raise self.fail(f"unknown value type {vtype} for key {key!r}")

    def array(self, key: str, depth: int) -> Any:
        if depth > 4:
            raise self.fail(f"arrays nested too deep in {key!r}")
        item_type = self.u32(f"the array type of {key!r}")
        n = self.u64(f"the array length of {key!r}")
        if depth > 0 or item_type == T_ARRAY:
            self.nested_left -= n
            if self.nested_left < 0:
                raise self.fail(
                    f"nested arrays in {key!r} hold more than {MAX_NESTED_ITEMS} items in all"
                )
        fmt = SCALAR_FORMATS.get(item_type)
        if fmt is not None:
            size = _SCALAR_SIZES[item_type]
            if n > (self.size - self.pos) // size:
                raise self.fail(f"array {key!r} claims {n} items, more than the file holds")
            start = self.pos
            if n > MAX_DECODED_ARRAY:
                self.pos += n * size
                return SkippedArray(item_type, n)
            self.need(n * size, f"the items of {key!r}")
            self.pos += n * size
            return list(struct.unpack_from(f"{self.e}{n}{fmt}", self.buf, start))
        if item_type == T_STRING:
            # each string takes at least its 8-byte length
            if n > (self.size - self.pos) // 8:
                raise self.fail(f"array {key!r} claims {n} strings, more than the file holds")
            if n > MAX_DECODED_ARRAY:
                self._skip_strings(n, key)
                return SkippedArray(item_type, n)
            return [self.string(f"item {i} of {key!r}") for i in range(n)]
        if item_type == T_ARRAY:
            if n > (self.size - self.pos) // 12:
                raise self.fail(f"array {key!r} claims {n} arrays, more than the file holds")
            items = [self.array(key, depth + 1) for _ in range(n)]
            if n > MAX_DECODED_ARRAY:
                return SkippedArray(item_type, n)
            return items
        raise self.fail(f"unknown array item type {item_type} in {key!r}")

    def _skip_strings(self, n: int, key: str) -> None:
        # The hot loop of a 262k-token vocabulary: keep it to one unpack and one add per item.
        unpack = struct.Struct(self.e + "Q").unpack_from
        buf = self.buf
        pos = self.pos
        end = self.avail - 8
        try:
            for _ in range(n):
                if pos > end:
                    break
                pos += 8 + unpack(buf, pos)[0]
            else:
                if pos <= self.size:
                    self.pos = pos
                    return
        except struct.error:  # pragma: no cover - guarded by the bound above
            pass
        if self.avail < self.size and pos + 8 <= self.size:
            raise _Short(pos + 8)
        self.pos = min(pos, self.size)
        raise self.fail(f"truncated inside the string array {key!r}")


_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_paths(path: Path) -> list[Path] | None:
    """All files of a split model named like `name-00001-of-00003.gguf`, or None when not split."""
    m = _SPLIT_RE.match(path.name)
    if not m:
        return None
    count = int(m.group("count"))
    if count < 1:
        return None
    prefix = m.group("prefix")
    return [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _open_buffer(path: Path) -> tuple[Any, int, Any]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise GGUFError(
            f"{path}: no such file", hint="check the model path (or give a metadata: block)"
        ) from None
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise GGUFError(f"{path}: not a GGUF file: the file is empty")
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            # not mappable (a pipe, a special file): read what a header can reasonably hold
            with open(fd, "rb", closefd=False) as fh:
                data = fh.read(256 * 1024 * 1024)
            return data, len(data), None
        return mm, size, mm
    finally:
        os.close(fd)


def _read_one(path: Path, split: int = 0) -> GGUFFile:
    buf, size, closer = _open_buffer(path)
    try:
        return _parse(buf, size, path, split)
    finally:
        if closer is not None:
            closer.close()


def _parse(buf: Any, size: int, path: Path, split: int, avail: int | None = None) -> GGUFFile:
    avail = size if avail is None else avail
    if avail < min(size, 24):
        raise _Short(24)
    if size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        got = bytes(buf[:4])
        raise GGUFError(
            f"{path}: not a GGUF file (starts with {got!r}, expected b'GGUF')",
            hint="give the path of a .gguf model file",
        )
    if size < 24:
        raise GGUFError(f"{path}: not a readable GGUF file: truncated header ({size} bytes)")
    (version_le,) = struct.unpack_from("<I", buf, 4)
    endian, order = "<", "little"
    version = version_le
    if version_le & 0xFFFF == 0 and version_le != 0:
        (version,) = struct.unpack_from(">I", buf, 4)
        endian, order = ">", "big"
    if version not in (2, 3):
        raise GGUFError(
            f"{path}: unsupported GGUF version {version} (llmctl reads versions 2 and 3)",
            hint="convert the model again with a current llama.cpp",
        )
    r = _Reader(buf, size, path, endian, avail)
    r.pos = 8
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the metadata count")
    # smallest metadata entry: 8 (key length) + 4 (type) + 1 (value); smallest tensor entry: 8+4+4+8
    if n_kv > (size - r.pos) // 13:
        raise r.fail(f"header claims {n_kv} metadata entries, more than the file holds")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vtype = r.u32(f"the type of {key!r}")
        metadata[key] = r.value(vtype, key)
    if n_tensors > (size - r.pos) // 24:
        raise r.fail(f"header claims {n_tensors} tensors, more than the file holds")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment must be a power of two, not {alignment!r}")
    tensors: list[TensorInfo] = []
    for i in range(n_tensors):
        name = r.string(f"the name of tensor #{i}")
        n_dims = r.u32(f"the dimension count of {name!r}")
        if not 1 <= n_dims <= 4:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to 4 allowed)")
        r.need(8 * n_dims, f"the shape of {name!r}")
        shape = struct.unpack_from(f"{endian}{n_dims}Q", buf, r.pos)
        r.pos += 8 * n_dims
        type_id = r.u32(f"the type of {name!r}")
        offset = r.u64(f"the offset of {name!r}")
        ttype = GGML_TYPES.get(type_id)
        if ttype is None:
            raise r.fail(f"tensor {name!r} has unknown ggml type {type_id} (a newer GGUF?)")
        if shape[0] % ttype.block_size:
            raise r.fail(
                f"tensor {name!r}: row size {shape[0]} is not a multiple of the {ttype.name} "
                f"block size {ttype.block_size}"
            )
        tensors.append(TensorInfo(name, tuple(int(d) for d in shape), ttype, offset, split))
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    _check_extent(path, tensors, data_offset, size)
    return GGUFFile(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tensors,
        alignment=alignment,
        data_offset=data_offset,
        file_size=size,
        byte_order=order,
        paths=[path],
    )


def _check_extent(path: Path, tensors: list[TensorInfo], data_offset: int, size: int) -> None:
    """The tensor data the table describes must lie within the file (llama.cpp's loader checks
    each tensor's offset + size against the file size; the last one needs no padding)."""
    if not tensors:
        return
    end = data_offset + max(t.offset + t.nbytes for t in tensors)
    if end > size:
        raise GGUFTruncated(
            f"{path}: the file is cut short: its tensor data ends at byte {end} but the file has "
            f"{size} bytes ({end - size} missing; an interrupted download?)",
            hint="download the model again (and compare its size or checksum with the source)",
        )


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


# A header past this is not a header: refuse it rather than read the weights.
MAX_HEADER_BYTES = 256 * 1024 * 1024


def read_gguf_stream(
    fh: Readable, size: int, name: str | Path, *, first: int = 1 << 20, split: int = 0
) -> GGUFFile:
    """Read a GGUF header from a binary file-like positioned at the file's start, reading no more
    than the header needs: `first` bytes, then twice what was read until the header parses.

    `size` is the whole file's size (from a directory listing or Content-Length); `name` is what
    errors call the file. For remote files (llmctl.hub.remote) and pipes.
    """
    path = Path(name)
    buf = bytearray()
    want = min(size, first)
    while True:
        while len(buf) < want:
            chunk = fh.read(want - len(buf))
            if not chunk:
                raise GGUFError(
                    f"{path}: not a readable GGUF file: the stream ended at byte {len(buf)} of {size}"
                )
            buf += chunk
        try:
            return _parse(buf, size, path, split, avail=len(buf))
        except _Short as short:
            if len(buf) >= MAX_HEADER_BYTES:
                raise GGUFError(
                    f"{path}: the GGUF header goes on past {MAX_HEADER_BYTES >> 20} MiB",
                    hint="this is not a model header llmctl reads without the whole file",
                ) from None
            want = min(size, MAX_HEADER_BYTES, max(short.want, 2 * len(buf)))


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read a GGUF header (metadata and tensor table); a split model is read across all its files.

    Raises GGUFError with the file and what to do when a file is missing, truncated or malformed.
    """
    p = Path(path)
    parts = split_paths(p)
    if parts is None or len(parts) == 1:
        return _read_one(p)
    first = _read_one(parts[0], 0)
    count = first.metadata.get("split.count")
    if isinstance(count, int) and count != len(parts):
        raise GGUFError(
            f"{parts[0]}: split.count is {count} but the file name says {len(parts)} parts"
        )
    tensors = list(first.tensors)
    for i, part in enumerate(parts[1:], start=1):
        if not part.exists():
            raise GGUFError(
                f"{part}: part {i + 1} of the split model {parts[0].name} is missing",
                hint="download every -0000N-of- part into the same folder",
            )
        tensors.extend(_read_one(part, i).tensors)
    expected = first.metadata.get("split.tensors.count")
    if isinstance(expected, int) and expected != len(tensors):
        raise GGUFError(
            f"{parts[0]}: split.tensors.count is {expected} but the parts hold {len(tensors)} tensors"
        )
    first.tensors = tensors
    first.paths = parts
    first.file_size = sum(part.stat().st_size for part in parts)
    return first
