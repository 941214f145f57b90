"""`GET /ui/api/log?server=NAME&lines=N`: a server's log as server-sent events, followed live.

Streams are long-lived connections: they are capped per client and in all (counted in the
runtime's `log_streams`), and each ends when its client leaves or the router shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmctl.router import sse
from llmctl.router.dashboard.modes import mode_of
from llmctl.router.dashboard.protocol import MANAGED, Router, router_of
from llmctl.router.errors import RouterError, bad_request

LOG_POLL_S = 0.25
LOG_FILE_CHECK_S = 1.0
LOG_HEARTBEAT_S = 15.0
MAX_LOG_LINES = 2000
# log streams are long-lived connections: a few per client and a bound in all, so that streams
# can never take the connections (and file descriptors) the API needs
MAX_LOG_STREAMS_PER_CLIENT = 4
MAX_LOG_STREAMS = 32


async def log_endpoint(request: Request) -> Response:
    router = router_of(request)
    router.check_auth(request)
    server = request.query_params.get("server", MANAGED)
    mode = mode_of(router)
    running = [mode.server_name(p) for p in router.supervisor.records()]
    if server != MANAGED and server not in running:
        names = ", ".join(repr(n) for n in running) or repr(MANAGED)
        raise RouterError(
            404, f"No server named {server!r}; this router runs {names}.", code="not_found"
        )
    raw = request.query_params.get("lines", "200")
    if not raw.isdigit() or int(raw) > MAX_LOG_LINES:
        raise bad_request(
            f"lines must be a whole number from 0 to {MAX_LOG_LINES}, not {raw!r}.", param="lines"
        )
    client = request.client.host if request.client else "?"
    open_streams = router.log_streams
    mine = open_streams.get(client, 0)
    if mine >= MAX_LOG_STREAMS_PER_CLIENT or sum(open_streams.values()) >= MAX_LOG_STREAMS:
        router.metrics.count_rejected("log_streams")
        whose = "this client" if mine >= MAX_LOG_STREAMS_PER_CLIENT else "all clients"
        limit = (
            MAX_LOG_STREAMS_PER_CLIENT if mine >= MAX_LOG_STREAMS_PER_CLIENT else MAX_LOG_STREAMS
        )
        raise RouterError(
            429,
            f"Too many log streams open for {whose} ({limit}); close one (a dashboard tab) first.",
            code="too_many_log_streams",
            retry_after=5,
        )
    return LogStream(router, int(raw), None if server == MANAGED else server, client)  # type: ignore[return-value]


class LogStream:
    """The log's last lines, then what is appended, as `lines` events; a new launch's log is
    followed as it appears (a `file` event names it). Ends when the client leaves or the router
    shuts down."""

    def __init__(
        self, router: Router, lines: int, profile: str | None = None, client: str = "?"
    ) -> None:
        self.router = router
        self.lines = lines
        self.profile = profile  # None: the newest server's log (or the latest launch's)
        self.client = client
        router.log_streams[client] = router.log_streams.get(client, 0) + 1  # counted from now

    def _log_path(self) -> Path | None:
        if self.profile is None:
            return self.router.supervisor.log_path()
        rec = self.router.supervisor.records().get(self.profile)
        return Path(rec.log) if rec is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()),
        ]
        try:
            await self._stream(headers, receive, send)
        finally:
            left = self.router.log_streams.get(self.client, 1) - 1
            if left > 0:
                self.router.log_streams[self.client] = left
            else:
                self.router.log_streams.pop(self.client, None)

    async def _stream(
        self, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            with contextlib.suppress(OSError):  # the client went away mid-write
                await self._follow(send)
            tg.cancel_scope.cancel()
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, send: Send) -> None:
        from llmctl.supervisor.logs import LogFollower, tail_lines

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        router = self.router
        path: Path | None = None
        follower: LogFollower | None = None
        loop = asyncio.get_running_loop()
        next_check = 0.0
        last_sent = loop.time()
        try:
            while not router.shutting_down:
                now = loop.time()
                if now >= next_check:
                    next_check = now + LOG_FILE_CHECK_S
                    current = await run_in_threadpool(self._log_path)
                    if current != path and current is not None:
                        if follower is not None:
                            follower.close()
                        first = path is None
                        path = current
                        size = _size(path)
                        await emit(sse.event({"path": str(path)}, name="file"))
                        # a log that appeared while following is shown whole, the first one's tail
                        back = self.lines if first else MAX_LOG_LINES
                        head = tail_lines(path, back, end=size)
                        if head:
                            await emit(sse.event(json.dumps(head), name="lines"))
                        follower = LogFollower(path, size, keep_open=False)
                        last_sent = now
                if follower is not None:
                    lines, _grew = follower.poll()
                    if lines:
                        await emit(sse.event(json.dumps(lines), name="lines"))
                        last_sent = now
                if now - last_sent >= LOG_HEARTBEAT_S:
                    await emit(sse.comment("keep-alive"))
                    last_sent = now
                await asyncio.sleep(LOG_POLL_S)
        finally:
            if follower is not None:
                follower.close()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
