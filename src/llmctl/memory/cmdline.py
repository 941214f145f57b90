"""Read a llama-server command line into LaunchOptions and a model path (`llmctl estimate -- ...`).

Only the flags that change memory use are read; every other flag is skipped (with its value) and
listed, so the caller can say what was not taken into account.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmctl.errors import UsageError
from llmctl.llama.rpc import RPC_DEFAULT_PORT, RPC_FLAG, split_endpoints
from llmctl.llama.vocab import CACHE_TYPES, FFN_EXPS_REGEX, FlashAttn, parse_overrides, tristate
from llmctl.memory.options import LaunchOptions

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")

# flag -> field; flags that take a value
_VALUED = {
    "-m": "model",
    "--model": "model",
    "-c": "ctx_size",
    "--ctx-size": "ctx_size",
    "-np": "parallel",
    "--parallel": "parallel",
    "-ctk": "cache_type_k",
    "--cache-type-k": "cache_type_k",
    "-ctv": "cache_type_v",
    "--cache-type-v": "cache_type_v",
    "-fa": "flash_attn",
    "--flash-attn": "flash_attn",
    "-ngl": "n_gpu_layers",
    "--n-gpu-layers": "n_gpu_layers",
    "--gpu-layers": "n_gpu_layers",
    "-b": "batch_size",
    "--batch-size": "batch_size",
    "-ub": "ubatch_size",
    "--ubatch-size": "ubatch_size",
    "-ncmoe": "n_cpu_moe",
    "--n-cpu-moe": "n_cpu_moe",
    "-ot": "override_tensor",
    "--override-tensor": "override_tensor",
    "-mm": "mmproj",
    "--mmproj": "mmproj",
    "-md": "model_draft",
    "--model-draft": "model_draft",
    "--spec-draft-model": "model_draft",
    RPC_FLAG: "rpc",
}
_SWITCHES = {
    "-kvu": ("kv_unified", True),
    "--kv-unified": ("kv_unified", True),
    "-no-kvu": ("kv_unified", False),
    "--no-kv-unified": ("kv_unified", False),
    "--swa-full": ("swa_full", True),
    "-nkvo": ("no_kv_offload", True),
    "--no-kv-offload": ("no_kv_offload", True),
    "-cmoe": ("cpu_moe", True),
    "--cpu-moe": ("cpu_moe", True),
}


@dataclass
class ParsedCommand:
    """A llama-server command line as far as memory is concerned."""

    model: str | None
    options: LaunchOptions
    ignored: list[str] = field(default_factory=list)
    given: set[str] = field(default_factory=set)  # LaunchOptions fields set on the line
    mmproj: str | None = None
    model_draft: str | None = None
    rpc: list[str] = field(default_factory=list)  # --rpc endpoints, in order

    @property
    def fit_may_change(self) -> bool:
        """llama-server's --fit (on by default) may shrink -c and -ngl that were not given."""
        fit_off = any(i.split()[:2] in (["-fit", "off"], ["--fit", "off"]) for i in self.ignored)
        return not fit_off and not {"ctx_size", "n_gpu_layers"} <= self.given


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"{flag} expects a whole number, not {value!r}", hint=f"e.g. {flag} 4096"
        ) from None


def _flash_attn(value: str) -> FlashAttn:
    fa = tristate(value)
    if fa is not None:
        return fa
    raise UsageError(f"unknown value for --flash-attn: {value!r}", hint="use on, off or auto")


def parse_llama_args(argv: Sequence[str]) -> ParsedCommand:
    """Parse llama-server arguments (a leading program path is skipped). Raises UsageError."""
    args = list(argv)
    if args and not args[0].startswith("-"):
        args = args[1:]  # the program itself: llama-server -m ...
    opts = LaunchOptions()
    model: str | None = None
    ignored: list[str] = []
    given: set[str] = set()
    extras: dict[str, str] = {}
    rpc: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in _SWITCHES:
            name, switch = _SWITCHES[flag]
            if name == "cpu_moe":  # every expert tensor on the CPU
                opts.override_tensor = _join(opts.override_tensor, f"{FFN_EXPS_REGEX}=CPU")
            else:
                setattr(opts, name, switch)
            given.add(name)
            i += 1
            continue
        if flag in _VALUED:
            if eq:
                value = inline
                i += 1
            else:
                if i + 1 >= len(args):
                    raise UsageError(f"{flag} needs a value", hint=f"e.g. {flag} <value>")
                value = args[i + 1]
                i += 2
            target = _VALUED[flag]
            given.add(target)
            if target == "model":
                model = value
            elif target == "rpc":
                try:
                    rpc = split_endpoints(value)
                except ValueError as err:
                    raise UsageError(
                        f"{flag}: {err}",
                        hint=f"{flag} 192.168.1.20:{RPC_DEFAULT_PORT},192.168.1.21:{RPC_DEFAULT_PORT}",
                    ) from None
            elif target in ("mmproj", "model_draft"):
                extras[target] = value
            elif target == "override_tensor":
                try:
                    parse_overrides(value)
                except ValueError as err:
                    raise UsageError(f"{flag}: {err}", hint=f"{flag} 'exps=CPU'") from None
                opts.override_tensor = _join(opts.override_tensor, value)
            elif target == "flash_attn":
                opts.flash_attn = _flash_attn(value)
            elif target in ("cache_type_k", "cache_type_v"):
                if value.lower() not in CACHE_TYPES:
                    raise UsageError(
                        f"unsupported cache type for {flag}: {value!r}",
                        hint=f"one of {', '.join(CACHE_TYPES)}",
                    )
                setattr(opts, target, value.lower())
            elif target == "n_gpu_layers":
                opts.n_gpu_layers = -1 if value in ("auto", "all") else _int(flag, value)
            else:
                number = _int(flag, value)
                if target == "parallel" and number == 0:
                    raise UsageError(
                        "-np 0 is rejected by llama-server", hint="use -1 (auto) or >= 1"
                    )
                setattr(opts, target, number)
            continue
        # not a memory flag: skip it, and its value when one follows
        if arg.startswith("-"):
            if not eq and i + 1 < len(args):
                nxt = args[i + 1]
                if not nxt.startswith("-") or _NUMBER.match(nxt):
                    ignored.append(f"{arg} {nxt}")
                    i += 2
                    continue
            ignored.append(arg)
        else:
            ignored.append(arg)
        i += 1
    return ParsedCommand(
        model, opts, ignored, given, extras.get("mmproj"), extras.get("model_draft"), rpc
    )


def _join(old: str | None, new: str) -> str:
    """Repeated -ot flags add to one list, in order."""
    return f"{old},{new}" if old else new
