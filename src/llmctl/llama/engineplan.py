"""llama-server's own memory plan: the `fit_memory_breakdown` event of `--log-jsonl`.

With `--log-jsonl`, llama-server writes one JSON object per line on stdout, and before it reads a
single weight the dry run of the allocation it is about to make:
`{"type":"fit_memory_breakdown","data":{"unit":"MiB","rows":[{"kind","name","total","free",
"self","model","context","compute","unaccounted"}, ...]}}`, one row per device (`kind: device`),
the host (`host`) and buffer type (`buffer_type`). `probe(argv)` starts llama-server with a
command line, reads lines until that event, and stops it before the weights load: bounded in
time and in output, and never leaving the process behind. Any other outcome (a build without
`--log-jsonl`, no event, a crash, a hang, garbage) is a `reason` to fall back to the formula.

Builds without `--log-jsonl` that fit parameters to memory (b9093 and others of 2026; `--fit on`
is their default) print the same dry run as a text table in their log, before any weight is read:

    common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model ...
    common_memory_breakdown_print: |   - CUDA0 (RTX 3090)   | 24135 = 1500 + (22000 = 20000 + ...
    common_memory_breakdown_print: |   - Host               |                  8 =     2 + ...

`TextTable` reads it into the same plan (`probe(argv, jsonl=False)`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmctl.llama.logline import JSONL_FLAG

EVENT = "fit_memory_breakdown"
FLAG = JSONL_FLAG  # llama/logline.py states it
MAX_LINE = 1024 * 1024  # one JSON line; beyond it the line is garbage, not a plan
MAX_OUTPUT = 16 * 1024 * 1024  # all the output a probe reads before it gives up
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
TERMS = ("model", "context", "compute")
# a load that got this far stated no plan before it (the plan comes before any weight is read)
LOADED_MARKS = (
    "llama_server: model loaded",
    "main: model loaded",
    "server is listening on",
)  # weights, KV cache (and recurrent state), compute buffer


def supports_log_jsonl(help_text: str) -> bool:
    """Whether a llama-server's `--help` lists `--log-jsonl`."""
    return FLAG in help_text


@dataclass(frozen=True)
class PlanRow:
    """One row of the plan, in bytes (None: the row does not state it)."""

    kind: str  # device, host, buffer_type
    name: str
    model: int | None = None
    context: int | None = None
    compute: int | None = None
    self_bytes: int | None = None
    total: int | None = None
    free: int | None = None
    unaccounted: int | None = None

    @property
    def planned(self) -> int:
        """What this row will hold: weights, context and compute."""
        return sum(v or 0 for v in (self.model, self.context, self.compute))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name}
        for key in ("model", "context", "compute", "total", "free", "unaccounted"):
            value = getattr(self, key)
            if value is not None:
                out[f"{key}_bytes"] = value
        if self.self_bytes is not None:
            out["self_bytes"] = self.self_bytes
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanRow:
        def get(key: str) -> int | None:
            value = data.get(f"{key}_bytes")
            return int(value) if isinstance(value, int) else None

        return cls(
            kind=str(data.get("kind", "")),
            name=str(data.get("name", "")),
            model=get("model"),
            context=get("context"),
            compute=get("compute"),
            self_bytes=get("self"),
            total=get("total"),
            free=get("free"),
            unaccounted=get("unaccounted"),
        )


@dataclass(frozen=True)
class EnginePlan:
    """The rows of one `fit_memory_breakdown` event. `resolution`: the unit the engine stated
    its figures in (its rounding)."""

    rows: tuple[PlanRow, ...]
    resolution: int = 1024**2

    def memory_rows(self) -> list[PlanRow]:
        """The rows that hold memory: devices, the host, and the buffer types llama.cpp counts
        apart from both (`common_memory_breakdown_print`: neither a host buffer nor a device's,
        i.e. the CPU's extra buffer types such as AMX or CPU_REPACK, in RAM)."""
        return [r for r in self.rows if r.kind in ("device", "host", "buffer_type")]

    @staticmethod
    def on_host(row: PlanRow) -> bool:
        """Whether a memory row is in RAM: the host and the CPU's extra buffer types."""
        return row.kind in ("host", "buffer_type")

    def row(self, name: str) -> PlanRow | None:
        return next((r for r in self.memory_rows() if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"resolution_bytes": self.resolution, "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnginePlan:
        rows = tuple(PlanRow.from_json(r) for r in data.get("rows", []) if isinstance(r, dict))
        return cls(rows, int(data.get("resolution_bytes", 1024**2)))


class PlanFormatError(ValueError):
    """A `fit_memory_breakdown` event that cannot be read as a plan."""


def parse_line(line: str | bytes) -> EnginePlan | None:
    """The plan in one line of `--log-jsonl` output; None for any other line.

    Raises PlanFormatError for a line that is the event but malformed (unknown unit, rows that
    are not objects, figures that are not numbers).
    """
    if len(line) > MAX_LINE:
        return None
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if EVENT not in text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("type") != EVENT:
        return None
    data = obj.get("data")
    if not isinstance(data, dict):
        raise PlanFormatError(f"{EVENT}: no data object")
    unit = data.get("unit", "MiB")
    if unit not in UNITS:
        raise PlanFormatError(f"{EVENT}: unknown unit {unit!r}")
    scale = UNITS[unit]
    raw = data.get("rows")
    if not isinstance(raw, list) or not raw:
        raise PlanFormatError(f"{EVENT}: no rows")
    rows = []
    for item in raw:
        if not isinstance(item, dict):
            raise PlanFormatError(f"{EVENT}: a row is not an object")

        def figure(key: str, item: dict[str, Any] = item) -> int | None:
            value = item.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise PlanFormatError(f"{EVENT}: {key} is not a size: {value!r}")
            return round(value * scale)

        rows.append(
            PlanRow(
                kind=str(item.get("kind", "")),
                name=str(item.get("name", "")),
                model=figure("model"),
                context=figure("context"),
                compute=figure("compute"),
                self_bytes=figure("self"),
                total=figure("total"),
                free=figure("free"),
                unaccounted=figure("unaccounted"),
            )
        )
    return EnginePlan(tuple(rows), scale)


TEXT_HEADER = "memory breakdown [MiB]"
TEXT_FUNCTION = "common_memory_breakdown_print:"
_N = r"\s*(-?\d+)\s*"
# "| - NAME (DESCRIPTION) | total = free + (self = model + context + compute) + unaccounted |"
_DEVICE_ROW = re.compile(
    rf"\|\s*- (\S+) \((.*)\)\s*\|{_N}={_N}\+\s*\({_N}={_N}\+{_N}\+{_N}\)\s*\+{_N}\|"
)
# "| - NAME | self = model + context + compute |" (the host, then other buffer types)
_OTHER_ROW = re.compile(rf"\|\s*- (.+?)\s*\|{_N}={_N}\+{_N}\+{_N}\|")


class TextTable:
    """The memory plan of a build that prints it as text (common_memory_breakdown_print), read
    line by line: `feed` returns the plan once its table has ended, else None."""

    def __init__(self) -> None:
        self.rows: list[PlanRow] | None = None  # None until the header is seen

    def feed(self, text: str) -> EnginePlan | None:
        if TEXT_HEADER in text:
            self.rows = []
            return None
        if self.rows is None:
            return None
        row = _text_row(text) if TEXT_FUNCTION in text else None
        if row is not None:
            self.rows.append(row)
            return None
        return self.end()

    def end(self) -> EnginePlan | None:
        """The plan of a table the output ended in (None when there is none)."""
        rows, self.rows = self.rows, None
        return EnginePlan(tuple(rows)) if rows else None


def _text_row(text: str) -> PlanRow | None:
    mib = 1024 * 1024
    m = _DEVICE_ROW.search(text)
    if m is not None:
        total, free, self_, model, context, compute, unaccounted = (int(g) for g in m.groups()[2:])
        return PlanRow(
            "device", m.group(1), model * mib, context * mib, compute * mib, self_ * mib,
            total * mib, free * mib, unaccounted * mib,
        )  # fmt: skip
    m = _OTHER_ROW.search(text)
    if m is not None:
        self_, model, context, compute = (int(g) for g in m.groups()[1:])
        name = m.group(1)
        kind = "host" if name == "Host" else "buffer_type"
        return PlanRow(kind, name, model * mib, context * mib, compute * mib, self_ * mib)
    return None


@dataclass
class ProbeOutcome:
    """What a probe found: the plan, or why there is none (then the formula decides)."""

    plan: EnginePlan | None
    reason: str | None
    seconds: float
    log_tail: list[str] = field(default_factory=list)


def probe(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_output: int = MAX_OUTPUT,
    grace: float = 5.0,
    jsonl: bool = True,
) -> ProbeOutcome:
    """Run `argv` (a llama-server command line) with `--log-jsonl` until its memory plan; with
    `jsonl` False (a build without it), as given, until the plan's text table.

    The process is stopped as soon as the plan arrives (before the weights load), when it ends,
    after `timeout` seconds, or after `max_output` bytes, whichever comes first; it is always
    waited for before this returns (SIGTERM, then SIGKILL after `grace` seconds).
    """
    t0 = time.monotonic()
    cmd = [*argv] if FLAG in argv or not jsonl else [*argv, FLAG]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as err:
        return ProbeOutcome(None, f"cannot start {argv[0]}: {err.strerror or err}", 0.0)
    tail: list[str] = []
    try:
        table = None if jsonl else TextTable()
        plan, reason = _read_until_plan(proc, t0 + timeout, max_output, tail, table)
    finally:
        _stop(proc, grace)
    return ProbeOutcome(plan, reason, time.monotonic() - t0, tail[-20:])


def _read_until_plan(
    proc: subprocess.Popen[bytes],
    deadline: float,
    max_output: int,
    tail: list[str],
    table: TextTable | None = None,
) -> tuple[EnginePlan | None, str | None]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    seen = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, "llama-server stated no memory plan within the time limit"
            if not sel.select(min(left, 1.0)):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                if table is not None and (plan := table.end()) is not None:
                    return plan, None
                code = proc.wait()
                what = f"exited with {code}" if code >= 0 else f"was killed by signal {-code}"
                return None, f"llama-server {what} before it stated a memory plan"
            seen += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if table is not None:
                    text = line[:2000].decode("utf-8", "replace")
                    plan = table.feed(text)
                else:
                    try:
                        plan = parse_line(line)
                    except PlanFormatError as err:
                        return None, f"llama-server's memory plan cannot be read: {err}"
                    text = _text(line)
                if plan is not None:
                    return plan, None
                if any(mark in text for mark in LOADED_MARKS):
                    return None, (
                        "llama-server loaded the model without stating its plan first "
                        "(`--fit off` skips it)"
                    )
                tail.append(text)
                del tail[:-40]
            if len(buf) > MAX_LINE:
                buf = b""  # a line this long is garbage; keep reading for the plan
            if seen > max_output:
                return None, f"llama-server wrote {seen} bytes without a memory plan"


def _text(line: bytes) -> str:
    """A log line as a person reads it: the message of a JSON log line, else the text."""
    text = line[:2000].decode("utf-8", "replace")
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            obj = json.loads(text)
            if isinstance(obj, dict) and isinstance(obj.get("msg"), str):
                return str(obj["msg"]).rstrip("\n")
    return text


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop the probe and wait for it: SIGTERM to its group, SIGKILL after `grace`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
