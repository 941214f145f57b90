"""What the router saw lately, for the dashboard: recent requests and each profile's last load.

Bounded in memory (a ring of requests, one record per profile); recording is a few attribute
writes on the request path, the parsing of token counts happens when the dashboard asks. The
generation speed (llama-server's `timings`) is read at the end of a request, from the answer's
tail the relay keeps anyway, and only when the tail names it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

RECENT_REQUESTS = 200
# the steps of a load as llama-server logs them at its default verbosity, in order: (what the
# line says, share of the load done, what to call it); llama.cpp's loading dots carry no count
LOAD_STEPS = (
    (re.compile(r"llama_server: initializing"), 0.05, "starting"),
    (re.compile(r"load_model: loading model|llama_model_load"), 0.15, "reading the model"),
    (re.compile(r"load_tensors|threadpool init"), 0.5, "tensors loaded, creating the context"),
    (re.compile(r"llama_kv_cache|initializing, n_slots"), 0.8, "allocating the KV cache and slots"),
    (re.compile(r"model loaded|listening on"), 1.0, "ready"),
)
_OBJECT_START = re.compile(rb"\s*:\s*\{")


@dataclass
class RequestRecord:
    at: float  # wall clock, seconds
    method: str
    path: str
    profile: str | None
    upstream: str | None
    status: int
    duration_s: float
    body_tail: bytes = b""  # where the answer's "usage" may be, parsed on demand
    speed: Speed | None = None  # llama-server's timings, when the answer has them

    def to_json(self) -> dict[str, Any]:
        usage = usage_from(self.body_tail)
        return {
            "at": round(self.at, 3),
            "method": self.method,
            "path": self.path,
            "profile": self.profile,
            "upstream": self.upstream,
            "status": self.status,
            "duration_s": round(self.duration_s, 4),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "tokens_per_second": None if self.speed is None else round(self.speed.generation, 2),
            "prompt_tokens_per_second": (
                None
                if self.speed is None or self.speed.prompt is None
                else round(self.speed.prompt, 2)
            ),
        }


@dataclass(frozen=True, slots=True)
class Speed:
    """How fast llama-server answered one request, from its `timings`: tokens generated per
    second and how many, and prompt tokens evaluated per second (None when it evaluated none)."""

    generation: float
    generated: int
    prompt: float | None


def speed_from(body: bytes) -> Speed | None:
    """The generation speed an answer's `timings` state (llama-server puts them in a whole
    answer and in a stream's last chunk), or None when it generated nothing or says nothing."""
    if b'"timings"' not in body:
        return None
    timings = _last_object(body, b'"timings"')
    if timings is None:
        return None
    per_s, n = _positive(timings.get("predicted_per_second")), timings.get("predicted_n")
    if per_s is None or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    return Speed(per_s, n, _positive(timings.get("prompt_per_second")))


def _positive(v: object) -> float | None:
    """A finite positive number as a float (JSON's null, NaN and strings are not)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) and v > 0 else None


def usage_from(body: bytes) -> dict[str, int]:
    """Token counts from the end of an answer: its "usage" object (OpenAI), else llama-server's
    "timings" (which it sends in a stream's last chunk); {} when it says neither."""
    usage = _last_object(body, b'"usage"')
    if usage is not None:
        return _ints(usage, prompt_tokens="prompt_tokens", completion_tokens="completion_tokens")
    timings = _last_object(body, b'"timings"')
    if timings is None:
        return {}
    # llama-server counts the prompt tokens it evaluated and those it found in its cache apart
    out = _ints(
        timings, prompt_tokens="prompt_n", cached="cache_n", completion_tokens="predicted_n"
    )
    if "prompt_tokens" in out:
        out["prompt_tokens"] += out.get("cached", 0)
    out.pop("cached", None)
    return out


def _ints(obj: dict[str, Any], **names: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for mine, theirs in names.items():
        v = obj.get(theirs)
        if isinstance(v, int) and not isinstance(v, bool):
            out[mine] = v
    return out


def _last_object(body: bytes, key: bytes) -> dict[str, Any] | None:
    """The JSON object after the last `key:` in `body` (nested objects allowed), if it parses."""
    at = body.rfind(key)
    if at < 0:
        return None
    m = _OBJECT_START.match(body, at + len(key))
    if m is None:
        return None
    start = m.end() - 1
    depth = 0
    for i in range(start, len(body)):
        c = body[i]
        if c == 0x7B:  # {
            depth += 1
        elif c == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    obj = json.loads(body[start : i + 1])
                except ValueError:
                    return None
                return obj if isinstance(obj, dict) else None
    return None


@dataclass
class LoadRecord:
    """The last switch to a profile as the router saw it."""

    profile: str
    state: str  # loading, ready, failed
    started_at: float
    message: str = ""
    error: str | None = None
    tail: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    lines: int = 0
    done: float = 0.0  # share of the load done, by the steps in LOAD_STEPS its log has reached
    step: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "started_at": round(self.started_at, 3),
            "message": self.message,
            "error": self.error,
            "tail": list(self.tail),
            "elapsed_s": round(self.elapsed_s, 3),
            "log_lines": self.lines,
            "progress": self.done,
            "step": self.step,
        }


class Activity:
    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self.requests: deque[RequestRecord] = deque(maxlen=size)
        self.loads: dict[str, LoadRecord] = {}

    def request(
        self,
        method: str,
        path: str,
        profile: str | None,
        upstream: str | None,
        status: int,
        duration_s: float,
        body_tail: bytes = b"",
        speed: Speed | None = None,
    ) -> None:
        self.requests.append(
            RequestRecord(
                time.time(), method, path, profile, upstream, status, duration_s, body_tail, speed
            )
        )

    def load_step(self, step: Any) -> None:
        """One step of a switch (a scheduler.Progress: starting, loading lines, ready, error)."""
        profile, kind, message, elapsed_s = step.profile, step.kind, step.message, step.elapsed_s
        if profile is None or kind not in ("starting", "loading", "ready"):
            return
        rec = self.loads.get(profile)
        if rec is None or kind == "starting" or rec.state != "loading":
            rec = self.loads[profile] = LoadRecord(profile, "loading", time.time())
        rec.elapsed_s = elapsed_s
        if kind == "loading":
            rec.lines += 1
            for pattern, done, step in LOAD_STEPS:
                if done > rec.done and pattern.search(message):
                    rec.done, rec.step = done, step
        if kind == "ready":
            rec.state = "ready"
            rec.done, rec.step = 1.0, "ready"
        if message:
            rec.message = message

    def load_failed(self, profile: str, message: str, tail: list[str]) -> None:
        rec = self.loads.get(profile) or LoadRecord(profile, "failed", time.time())
        rec.state = "failed"
        rec.error = message
        rec.tail = tail
        self.loads[profile] = rec
