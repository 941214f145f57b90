"""llama.cpp's RPC backend (ggml-rpc), stated once: endpoints, device names, the device order.

A `ggml-rpc-server` on another machine exposes its devices (its GPUs, else its CPU) over TCP;
`llama-server --rpc host:port,...` adds each server's devices to its own, and splits layers over
them like over local GPUs. Facts read from the pinned tree (ggml/src/ggml-rpc/ggml-rpc.cpp,
common/arg.cpp, src/llama.cpp):

- An endpoint is `host:port`, split at the first `:` (no IPv6 literals); a server that cannot be
  reached makes llama-server abort while it parses its arguments.
- The devices of every server get one numbering, in `--rpc` order: `RPC0`, `RPC1`, ... (the names
  `--device` takes). Their buffers are printed as `RPC<i>[host:port]`, `i` counting the devices
  of that one server (so `RPC0[host:port]` for a server's first device).
- Without `--device`, the RPC devices come first in the split, then the local GPUs ("to minimize
  network transfers"); with `--device`, the order given. `--device` is read when it is met on the
  command line, so `--rpc` must come before it, or the RPC names are unknown.
- The layers are split over all of them by one rule (proportional to each device's free memory,
  or to `--tensor-split`); see `llmctl.placement.plan`.
- A build without `-DGGML_RPC=ON` knows the flag but refuses it: "RPC not supported in this build".
"""

from __future__ import annotations

import re
from pathlib import Path

RPC_FLAG = "--rpc"
RPC_SERVER_BINARY = "ggml-rpc-server"
RPC_DEFAULT_PORT = 50052
NOT_SUPPORTED = "RPC not supported in this build"

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")


def parse_endpoint(text: object) -> str:
    """`host:port` as llama.cpp reads it, trimmed; ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(
            f"an RPC server is host:port (e.g. 192.168.1.20:{RPC_DEFAULT_PORT}), not {text!r}"
        )
    value = text.strip()
    host, colon, port = value.partition(":")
    example = f"e.g. 192.168.1.20:{RPC_DEFAULT_PORT}"
    if not colon:
        raise ValueError(f"{value!r} has no port; an RPC server is host:port ({example})")
    if not host or not _HOST.match(host):
        raise ValueError(f"{value!r}: {host!r} is not a host name or IPv4 address ({example})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535 ({example})")
    return f"{host}:{int(port)}"


def split_endpoints(value: str) -> list[str]:
    """`--rpc a,b` as its endpoints (ValueError on a bad one or none)."""
    parts = [p for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError("no RPC servers given")
    return [parse_endpoint(p) for p in parts]


def device_key(endpoint: str) -> str:
    """llmctl's name for a server's device, stable across profiles: ggml-rpc's registry name."""
    return f"RPC[{endpoint}]"


def endpoint_of(key: str) -> str | None:
    """The endpoint of a `device_key`, None for other device names."""
    if key.startswith("RPC[") and key.endswith("]"):
        return key[4:-1]
    return None


def device_name(index: int) -> str:
    """The `--device` name of the index-th RPC device of one llama-server (in `--rpc` order)."""
    return f"RPC{index}"


def buffer_name(endpoint: str, index_on_server: int = 0) -> str:
    """How llama-server's log names the buffers it keeps on a server's device."""
    return f"RPC{index_on_server}[{endpoint}]"


def build_has_rpc(binary: str) -> bool | None:
    """Whether the llama-server at `binary` was built with -DGGML_RPC=ON, from the shared
    libraries beside it (a shared build keeps each ggml backend in its own libggml-NAME.so);
    None when it cannot tell (a static build, a wrapper script)."""
    folder = Path(binary).resolve().parent
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return None
    if any(n.startswith("libggml-rpc.") for n in names):
        return True
    if any(n.startswith("libggml-base.") for n in names):
        return False
    return None
