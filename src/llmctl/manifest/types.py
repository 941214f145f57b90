"""The field types of the profiles file and their coercers: sizes, durations, context sizes, ports and
port ranges, device names, RPC endpoints, on/off/auto, allowed hosts and CORS origins. Each is an
Annotated type that pydantic validates and writes into the JSON schema."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from llmctl.llama import rpc as llama_rpc
from llmctl.llama.vocab import tristate
from llmctl.manifest.sizes import parse_duration, parse_size


def _tristate(value: object) -> object:
    """on/off/auto from any spelling llama-server accepts, and from YAML 1.1 booleans."""
    return tristate(value) or value


_CTX = re.compile(r"^\s*([0-9]+)\s*([kK])?\s*$")


def _ctx_size(value: object) -> object:
    """8192, "8192", "8K", "128k" (K = 1024)."""
    if isinstance(value, str):
        m = _CTX.match(value)
        if m:
            return int(m.group(1)) * (1024 if m.group(2) else 1)
        raise ValueError(f"cannot read {value!r} as a context size; write 8192 or 8K")
    return value


def _parallel(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return -1
    return value


def _layers(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("all", "auto"):
        return -1
    return value


def _check_parallel(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("parallel must be a number of slots (1 or more) or auto")
    return value


_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$"},
    ]
}
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)?\s*$"},
    ]
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
TriState = Annotated[
    Literal["on", "off", "auto"],
    BeforeValidator(_tristate),
    WithJsonSchema({"enum": ["on", "off", "auto", True, False]}),
]
CtxSize = Annotated[
    int,
    BeforeValidator(_ctx_size),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+[kK]?$"},
            ]
        }
    ),
]
Parallel = Annotated[
    int,
    BeforeValidator(_parallel),
    AfterValidator(_check_parallel),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 1}, {"const": -1}, {"const": "auto"}]}
    ),
]
Layers = Annotated[
    int,
    BeforeValidator(_layers),
    Field(ge=-1),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": -1}, {"enum": ["all", "auto"]}]}),
]
Port = Annotated[int, Field(ge=1, le=65535)]

_PORT_RANGE = re.compile(r"^\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*$")


def _port_range(value: object) -> object:
    """ "8100-8199" -> (8100, 8199)."""
    if isinstance(value, str):
        m = _PORT_RANGE.match(value)
        if not m:
            raise ValueError(f"cannot read {value!r} as a port range; write 8100-8199")
        value = (int(m.group(1)), int(m.group(2)))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 65535):
            raise ValueError(f"a port range goes from low to high within 1-65535; got {lo}-{hi}")
        return (lo, hi)
    return value


PortRange = Annotated[
    tuple[int, int],
    BeforeValidator(_port_range),
    WithJsonSchema({"type": "string", "pattern": r"^\s*[0-9]{1,5}\s*-\s*[0-9]{1,5}\s*$"}),
]
_DEVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _device_name(value: object) -> object:
    if isinstance(value, str) and not _DEVICE_NAME.match(value):
        raise ValueError(f"{value!r} is not a device name; write CUDA0, Vulkan1, Metal or CPU")
    return value


DeviceName = Annotated[
    str,
    AfterValidator(_device_name),
    WithJsonSchema({"type": "string", "pattern": _DEVICE_NAME.pattern}),
]

_ENDPOINT_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*[A-Za-z0-9][A-Za-z0-9.\-_]*:[0-9]{1,5}\s*$",
}
RpcEndpoint = Annotated[
    str, AfterValidator(llama_rpc.parse_endpoint), WithJsonSchema(_ENDPOINT_SCHEMA)
]


def _rpc_list(value: object) -> object:
    """`rpc: a:1,b:2` (as llama-server's --rpc takes it) or one endpoint: a list."""
    if isinstance(value, str):
        return [p for p in value.split(",") if p.strip()] or [value]
    return value


KEEP_KV_DEFAULT_CAP = 8 * 1024**3


def _keep_kv(value: object) -> object:
    """true -> the default cap, false/null -> 0 (off), a size -> that cap in bytes."""
    if value is True:
        return KEEP_KV_DEFAULT_CAP
    if value is False or value is None:
        return 0
    return parse_size(value)


KeepKvCap = Annotated[
    int,
    BeforeValidator(_keep_kv),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, *_SIZE_SCHEMA["anyOf"]]}),
]


def _allowed_host(value: str) -> str:
    """A `serve.allowed_hosts` entry: a host name, `*.suffix`, or `*` (any)."""
    text = value.strip()
    if not text:
        raise ValueError("an empty host name")
    if "://" in text or "/" in text:
        raise ValueError(f"{value!r} is a URL; give the host name alone, e.g. llm.example.com")
    if any(c.isspace() for c in text):
        raise ValueError(f"{value!r} contains a space")
    return text


def _cors_origin(value: str) -> str:
    """A `serve.cors_origins` entry: scheme://host[:port] (with `*` globs), `*` or `null`."""
    text = value.strip().rstrip("/")
    if text in ("*", "null"):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme or not rest:
        raise ValueError(
            f"{value!r} is not an origin; write scheme://host[:port], e.g. "
            "https://chat.example.com or http://192.168.1.20:3000 (or * for any)"
        )
    if "/" in rest:
        raise ValueError(f"{value!r} has a path; an origin is scheme://host[:port] alone")
    return text


AllowedHost = Annotated[str, AfterValidator(_allowed_host)]
CorsOrigin = Annotated[str, AfterValidator(_cors_origin)]
