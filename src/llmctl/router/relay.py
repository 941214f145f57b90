"""What the router streams back itself: `ProgressStream` for switch progress as SSE."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from llmctl.router import sse
from llmctl.router.errors import (
    RouterError,
)
from llmctl.router.scheduler import Progress, ProgressFn


class ProgressStream:
    """`POST /models/switch` with `Accept: text/event-stream`: one event per step, then the result."""

    def __init__(self, run: Callable[[ProgressFn], Any]) -> None:
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        task = asyncio.ensure_future(self.run(events.put_nowait))
        task.add_done_callback(lambda _t: events.put_nowait(None))
        try:
            while True:
                item = await events.get()
                if item is None:
                    break
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse.event(item.to_json(), name=item.kind),
                        "more_body": True,
                    }
                )
            exc = task.exception()
            if isinstance(exc, RouterError):
                final = sse.event(exc.body(), name="error")
            elif exc is not None:
                raise exc
            else:
                final = sse.event(task.result(), name="done")
            await send({"type": "http.response.body", "body": final, "more_body": False})
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
