"""Per-launch log files: naming, rotation, following, tails, and what they say (errors, memory).

A log holds llama-server's text lines or, when it was started with `--log-jsonl`, its JSON lines
(llama/logline.py); every reader here gives text lines either way, and LogFollower keeps the
engine's memory plan event (`plan_line`) when one passes, or (`plans`) the plan of a text log's table.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.llama.engineplan import EnginePlan, TextTable

LOGS_DIR = "logs"
HEADER = "# llmctl:"
# llama-server prints these once /health answers 200 (tools/server/server.cpp)
READY_LINE = re.compile(r"\bmodel loaded\b|\blistening on\b")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def logs_dir(state_dir: Path) -> Path:
    return state_dir / LOGS_DIR


def new_log(
    state_dir: Path, profile: str, *, keep: int, protect: str | set[str] | None = None
) -> Path:
    """Create the log file of a new launch, deleting the oldest so `keep` remain."""
    folder = logs_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    name = f"{stamp}-{_UNSAFE.sub('_', profile)[:60] or 'profile'}"
    path = folder / f"{name}.log"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{name}-{n}.log"
    path.touch()
    kept = {protect} if isinstance(protect, str) else set(protect or ())
    rotate(state_dir, keep=keep, protect={str(path), *kept})
    return path


def latest_log(state_dir: Path, profile: str | None = None) -> Path | None:
    """The newest launch log, or the newest of `profile` (by the header a launch writes)."""
    folder = logs_dir(state_dir)
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".log")
    except OSError:
        return None
    if profile is None:
        return folder / names[-1] if names else None
    for name in reversed(names):
        if log_profile(folder / name) == profile:
            return folder / name
    return None


def log_profile(path: Path) -> str | None:
    """The profile a launch log belongs to, from its first header line."""
    try:
        with path.open("rb") as f:
            first = f.readline(4096).decode(errors="replace")
    except OSError:
        return None
    for word in first.split():
        if word.startswith("profile="):
            return word[len("profile=") :]
    return None


def rotate(state_dir: Path, *, keep: int, protect: set[str]) -> None:
    folder = logs_dir(state_dir)
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".log")
    except OSError:
        return
    excess = len(names) - keep
    for name in names:
        if excess <= 0:
            break
        path = folder / name
        if str(path) in protect:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
        excess -= 1


class LogFollower:
    """Reads what a running process appends to its log: whole lines, and whether it grew at all
    (llama.cpp prints progress dots without a newline while loading big models)."""

    def __init__(
        self, path: Path, offset: int = 0, *, keep_open: bool = True, plans: bool = False
    ) -> None:
        self.path = path
        self.offset = offset
        self.keep_open = keep_open  # False: the file is open only while a poll reads it
        self._partial = b""
        self._fd: int | None = None
        self.plan_line: str | None = None  # the first fit_memory_breakdown event (--log-jsonl)
        # with `plans` (a launch being watched): the plan of a text log's memory table
        self.text_plan: EnginePlan | None = None
        self._table: TextTable | None = None
        if plans:
            from llmctl.llama.engineplan import TextTable

            self._table = TextTable()

    def poll(self) -> tuple[list[str], bool]:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return [], False
        chunks = []
        try:
            while True:
                chunk = os.pread(self._fd, 1 << 16, self.offset)
                if not chunk:
                    break
                chunks.append(chunk)
                self.offset += len(chunk)
        finally:
            if not self.keep_open:
                self.close()
        if not chunks:
            return [], False
        data = self._partial + b"".join(chunks)
        *complete, self._partial = data.split(b"\n")
        return self._texts(_decode(line) for line in complete), True

    def _texts(self, raw: Iterable[str]) -> list[str]:
        from llmctl.llama.logline import event_type, text_lines

        out: list[str] = []
        for line in raw:
            if not line or line.startswith(HEADER):
                continue
            if line.startswith("{"):
                if self.plan_line is None and event_type(line) == "fit_memory_breakdown":
                    self.plan_line = line
                out += text_lines(line)
            else:
                if self._table is not None and self.text_plan is None:
                    self.text_plan = self._table.feed(line)
                out.append(line)
        return out

    def flush(self) -> list[str]:
        """The unterminated last line, if any (call once the process has exited)."""
        rest, self._partial = self._partial, b""
        return self._texts([_decode(rest)])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _decode(raw: bytes) -> str:
    return raw.decode(errors="replace").rstrip("\r")


def tail_lines(
    path: Path, n: int, *, max_bytes: int = 1 << 20, end: int | None = None
) -> list[str]:
    """The last `n` lines of a log (llmctl's header lines left out), up to byte `end`."""
    if n <= 0:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell() if end is None else min(end, f.tell())
            block = 8192
            data = b""
            pos = size
            while pos > 0 and data.count(b"\n") <= n and size - pos < max_bytes:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                block *= 2
    except OSError:
        return []
    from llmctl.llama.logline import text_lines

    lines = [_decode(x) for x in data.split(b"\n")]
    if pos > 0:
        lines = lines[1:]  # first one is cut
    lines = [t for x in lines if x and not x.startswith(HEADER) for t in text_lines(x)]
    return lines[-n:]


# llama-server log lines look like "0.00.011.794 E srv  ..." (time, level letter, component)
_LEVEL_E = re.compile(r"^\d+\.\d+\.\d+\.\d+ E ")
_ERROR_WORDS = re.compile(
    r"\berror\b|\bfailed\b|\bfailure\b|\bunable\b|\bcannot\b|\bcan't\b|\bcouldn't\b|\binvalid\b|"
    r"\bunsupported\b|\bnot found\b|no such file|out of memory|\boom\b|\babort|\bterminate|"
    r"\bsegmentation\b|\bunknown argument\b",
    re.IGNORECASE,
)
# what llama.cpp says after the cause, whatever the cause ("failed to load model" follows an
# invalid --main-gpu, a missing file, a bad tensor...): the cause comes first if any line names it
_GENERIC = re.compile(
    r"exiting due to|cleaning up before exit|failed to load model\b|"
    r"encountered an error while trying to fit",
    re.IGNORECASE,
)
_BENIGN = re.compile(r"\bwarn(ing)?\b|^\d+\.\d+\.\d+\.\d+ [IWD] ", re.IGNORECASE)


def error_line(lines: list[str]) -> str | None:
    """The line that says what went wrong: the first specific error, else a generic one."""
    generic = None
    loose = None
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if _GENERIC.search(text):
            generic = generic or text
            continue
        if _LEVEL_E.match(text) or (
            re.search(r"\berror\b", text, re.IGNORECASE) and not _BENIGN.search(text)
        ):
            return text
        if loose is None and _ERROR_WORDS.search(text) and not _BENIGN.search(text):
            loose = text
    return loose or generic


_LOG_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [A-Z] +")


def strip_prefix(line: str) -> str:
    """A llama.cpp log line without its time and level ("0.00.011.794 E ")."""
    return _LOG_PREFIX.sub("", line)


def error_tail(lines: list[str], n: int = 15) -> tuple[str | None, list[str]]:
    """(error line, tail): the last `n` lines with the error line first."""
    err = error_line(lines)
    tail = [x for x in lines if x.strip()][-n:]
    if err is not None:
        tail = [err, *[x for x in tail if x.strip() != err]]
    return err, tail


_PARTS = ("model", "kv", "output", "compute")


def parse_memory(path: Path, *, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """What llama-server reported about its memory in the log (MiB); {} when it said nothing.

    The size lines appear at verbosity 4 (`-lv 4`), read by `llmctl.memory.measured`: the main
    model's buffers per device (`*_by_device_mib`; the KV figures include recurrent states), the
    attention caches (`kv_mib`) and recurrent states (`recurrent_mib`) as each sums itself up;
    a draft model (`draft_mib`) and a multimodal projector (`mmproj_mib`) apart.
    """
    from llmctl.llama.logline import decode_text
    from llmctl.memory.measured import LOADED, parse_reported

    try:
        with path.open("rb") as f:
            text = decode_text(f.read(max_bytes).decode(errors="replace"))
    except OSError:
        return {}
    end = text.find(LOADED)
    if end >= 0:  # what follows is request logs
        text = text[:end]
    r = parse_reported(text)
    attn = [c.mib for c in r.caches if c.kind == "attn"]
    recurrent = [c.mib for c in r.caches if c.kind == "recurrent"]
    out: dict[str, Any] = {}
    if r.model:
        out["model_mib"] = r.total("model")
    if attn or (r.kv and not recurrent):  # without the caches' own sums, their buffers
        out["kv_mib"] = round(sum(attn), 2) if attn else r.total("kv")
    if recurrent:
        out["recurrent_mib"] = round(sum(recurrent), 2)
    if r.compute:
        out["compute_mib"] = r.total("compute")
    if r.draft is not None:  # the draft model's own buffers, all parts
        out["draft_mib"] = round(sum(r.draft.total(p) for p in _PARTS), 2)
    if r.mmproj_model or r.mmproj_compute:
        out["mmproj_mib"] = round(r.total("mmproj_model") + r.total("mmproj_compute"), 2)
    for kind, per_dev in (("model", r.model), ("kv", r.kv), ("compute", r.compute)):
        if per_dev:
            out[f"{kind}_by_device_mib"] = per_dev
    if out:
        out["total_mib"] = round(
            sum(v for k, v in out.items() if k.endswith("_mib") and not k.endswith("device_mib")),
            2,
        )
    return out
