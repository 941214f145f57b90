"""Lint rules that read the machine: model files, the llama-server binary, RPC servers; with the
manifest's own cross-profile rules (manifest/rules.py) they make `cross_checks`."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import Problem
from llmctl.llama.binary import find_binary, is_gguf, known_flags
from llmctl.llama.flags import FLAGS, MANAGED, flag_owner
from llmctl.manifest.problems import ProblemSink
from llmctl.manifest.rules import manifest_rules
from llmctl.paths import is_hub_model
from llmctl.supervisor.launch import profile_args

if TYPE_CHECKING:
    from llmctl.manifest.model import Manifest

_NUMBER = re.compile(r"^-?[0-9.]+$")
_ANY_HOST = {"0.0.0.0", "::", ""}


def cross_checks(manifest: Manifest, *, include_environment: bool = True) -> list[Problem]:
    """Rules across fields and profiles; with `include_environment`, also files and the binary."""
    out = ProblemSink(manifest)
    out.problems.extend(manifest_rules(manifest))
    if include_environment:
        _files(out)
        _binary(out)
        _rpc_servers(out)
    return out.problems


def _files(out: ProblemSink) -> None:
    for name, p in out.m.profiles.items():
        for field in ("model", "mmproj", "model_draft", "chat_template_file"):
            value = getattr(p, field)
            if not value:
                continue
            if is_hub_model(value):
                value = _hub_file(out, name, value)
                if value is None:
                    continue
            path = Path(value)
            if path.is_dir():
                out.at(
                    "error", "model-file", f"{field} {value} is a folder, not a file", name, field
                )
            elif not path.exists():
                where = (
                    " (estimates use its `metadata:` block)"
                    if field == "model" and p.metadata
                    else ""
                )
                out.at(
                    "warning",
                    "model-missing",
                    f"{field} {value} does not exist on this machine{where}",
                    name,
                    field,
                    hint="fine if the manifest is for another machine; else fix the path",
                )
            elif field != "chat_template_file" and is_gguf(path) is False:
                out.at(
                    "error",
                    "not-gguf",
                    f"{field} {value} is not a GGUF file (wrong magic bytes)",
                    name,
                    field,
                    hint="point it at a .gguf file (the first part of a split model)",
                )
            elif not os.access(path, os.R_OK):
                out.at("error", "model-file", f"{field} {value} is not readable", name, field)


def _hub_file(out: ProblemSink, name: str, ref: str) -> str | None:
    """A hub model's pulled file, for the checks of a file; None (and said) when not pulled.
    Nothing is asked of the hub."""
    from llmctl.hub.local import find_local
    from llmctl.hub.refs import parse_ref

    local = find_local(parse_ref(ref))
    if local is not None:
        return str(local.path)
    out.at(
        "warning",
        "model-not-pulled",
        f"model {ref} is on Hugging Face and not pulled yet: `switch` and `load` refuse it "
        "until it is; estimates read its header from the hub",
        name,
        "model",
        hint=f"`llmctl pull {name}` downloads it; `llmctl estimate {name}` says whether it fits "
        "first",
    )
    return None


def _binary(out: ProblemSink) -> None:
    binary = find_binary(out.m.server.binary)
    env = os.environ.get("LLMCTL_LLAMA_SERVER")
    source = "LLMCTL_LLAMA_SERVER" if env else "server.binary" if out.m.server.binary else None
    if binary is None:
        out.at(
            "warning",
            "binary",
            "llama-server is not on PATH and no binary is configured",
            None,
            hint="set server.binary or LLMCTL_LLAMA_SERVER, or build one with "
            "scripts/build-llama-server.sh",
            path=("server",),
        )
        return
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        out.at(
            "error",
            "binary",
            f"llama-server binary {binary} (from {source}) does not exist or is not executable",
            None,
            path=("server", "binary"),
            hint="fix the path, or build one with scripts/build-llama-server.sh",
        )
        return
    known = known_flags(binary)
    if known is None:
        out.at(
            "warning",
            "binary",
            f"{binary} --help did not list llama-server flags; flags not checked",
            None,
            path=("server", "binary"),
        )
        return
    for name, p in out.m.profiles.items():
        args = profile_args(name, p, "127.0.0.1", 1)
        extra_start = len(args) - len(p.extra_args)
        for i, arg in enumerate(args):
            if not arg.startswith("-") or _NUMBER.match(arg) or (i > 0 and args[i - 1] in MANAGED):
                continue
            flag = arg.split("=", 1)[0]
            if flag in known:
                continue
            if i >= extra_start:
                path = (*out.m.field_path(name, "extra_args"), i - extra_start)
                close = difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.7)
                out.at(
                    "error",
                    "unknown-flag",
                    f"{binary} does not know the flag {flag}",
                    name,
                    hint=f"did you mean {close[0]}?" if close else "see llama-server --help",
                    path=path,
                )
            else:
                field = flag_owner(flag)
                out.at(
                    "error",
                    "unknown-flag",
                    f"{binary} does not know {flag} (from `{field}`); it may be older than this field",
                    name,
                    field if any(f.field == field for f in FLAGS) else None,
                    hint="update llama-server, or remove the field",
                )


def _rpc_servers(out: ProblemSink) -> None:
    """The RPC servers profiles list: reachable now, and a llama-server that speaks RPC."""
    from llmctl.llama.rpc import NOT_SUPPORTED, RPC_SERVER_BINARY, build_has_rpc
    from llmctl.supervisor.devices import probe_rpc

    users: dict[str, tuple[str, int]] = {}  # endpoint -> first profile and index listing it
    for name, p in out.m.profiles.items():
        for i, ep in enumerate(p.rpc):
            users.setdefault(ep, (name, i))
    if not users:
        return
    binary = find_binary(out.m.server.binary)
    if binary is not None and build_has_rpc(binary) is False:
        name = next(iter(users.values()))[0]
        out.at(
            "warning",
            "rpc-unsupported",
            f"{binary} looks built without RPC (no libggml-rpc beside it): it refuses --rpc "
            f"({NOT_SUPPORTED!r})",
            name,
            "rpc",
            hint="build one with -DGGML_RPC=ON: LLMCTL_RPC=1 scripts/build-llama-server.sh",
        )
    for ep, (name, i) in users.items():
        why = probe_rpc(ep)
        if why is None:
            continue
        host, _, port = ep.partition(":")
        out.at(
            "warning",
            "rpc-unreachable",
            f"RPC server {ep} cannot be reached now ({why}); llama-server aborts at start "
            "while it cannot",
            name,
            hint=f"on {host}: `{RPC_SERVER_BINARY} -H {host} -p {port}`; fine if it runs "
            "only when the profile does",
            path=(*out.m.field_path(name, "rpc"), i),
        )
