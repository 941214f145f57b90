"""Server-sent events framing: comments keep a waiting client alive, events carry data."""

from __future__ import annotations

import json
from typing import Any

from llmctl.router.errors import RouterError

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"


def comment(text: str) -> bytes:
    """A comment line (`: text`); clients ignore it, but it resets their read timeout."""
    lines = text.splitlines() or [""]
    return "".join(f": {line}\n" for line in lines).encode() + b"\n"


def event(data: Any, *, name: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {name}\n" if name else ""
    body = "".join(f"data: {line}\n" for line in payload.splitlines() or [""])
    return (head + body + "\n").encode()


def reasoning_chunk(model: str, text: str) -> bytes:
    """A chat completion chunk whose delta is `reasoning_content` (a chat UI's thinking box):
    how a waiting stream shows a load's progress (serve.loading_state)."""
    import time

    return event(
        {
            "id": "llmctl-loading",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
        }
    )


def error_event(err: RouterError) -> bytes:
    """The OpenAI error body as a `data:` event, which the openai SDK raises as an APIError."""
    return event(err.body())
