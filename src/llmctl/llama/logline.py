"""llama-server's log lines in either form it writes, read as one.

Without `--log-jsonl`, a line is text: `0.00.011.794 I srv  load_model: ...` (minutes, seconds,
milliseconds, microseconds since the start; the level letter; the message). With it (PR #28437),
every line on stdout is one JSON object: `{"type":"log","time":<µs>,"level":"info","msg":"...\n"}`
for a log line, and typed events such as `{"type":"fit_memory_breakdown","data":{...}}` (see
engineplan.py). `text_lines` turns either into the text form, so that every reader (readiness,
the error line, `llmctl logs`, the dashboard, memory lines) sees what a person would read;
`event_type` names a typed event's line. Anything that is not such an object passes unchanged.
"""

from __future__ import annotations

import json

JSONL_FLAG = "--log-jsonl"
_LETTER = {"debug": "D", "info": "I", "warn": "W", "warning": "W", "error": "E", "none": "I"}
_PREFIX = '{"type":'


def _stamp(us: int) -> str:
    return f"{us // 60_000_000}.{us // 1_000_000 % 60:02d}.{us // 1000 % 1000:03d}.{us % 1000:03d}"


def _object(line: str) -> dict[str, object] | None:
    if not line.startswith(_PREFIX):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def text_lines(line: str) -> list[str]:
    """The text lines one log line stands for: itself (text), the message of a JSON log entry
    with the text form's time and level, or nothing for a typed event."""
    obj = _object(line)
    if obj is None:
        return [line]
    if obj.get("type") != "log":
        return []
    msg = obj.get("msg")
    if not isinstance(msg, str):
        return []
    t = obj.get("time")
    stamp = _stamp(t) if isinstance(t, int) and t >= 0 else "0.00.000.000"
    level = obj.get("level")
    letter = _LETTER.get(level, "I") if isinstance(level, str) else "I"
    return [f"{stamp} {letter} {part}" for part in msg.rstrip("\n").split("\n") if part.strip()]


def event_type(line: str) -> str | None:
    """The type of a typed JSON event line (`fit_memory_breakdown`, ...), else None."""
    obj = _object(line)
    if obj is None:
        return None
    kind = obj.get("type")
    return kind if isinstance(kind, str) and kind != "log" else None


def decode_text(text: str) -> str:
    """A whole log's text with JSON lines in their text form (for readers of a block of log)."""
    if _PREFIX not in text:
        return text
    return "\n".join(out for line in text.split("\n") for out in text_lines(line))
