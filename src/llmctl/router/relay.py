"""What the router sends back to a client: `Reply` (an upstream response once its first chunk is
in) and the header policy (hop-by-hop headers, credentials), `RelayResponse` (relay it chunk by
chunk), `WaitingStreamResponse` (an event stream that waits for a load with progress events,
then relays), `ProgressStream` (a switch's progress as SSE).

Nothing is buffered: each chunk the upstream sends is written to the client as it arrives. A
client that disconnects cancels the relay, and the upstream response is closed in a `finally`,
which closes its connection and so cancels the generation upstream. Once bytes have reached the
client a failure cannot be hidden: an event stream ends with an SSE error event, any other body
is cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Literal

import anyio
from starlette.types import Message, Receive, Scope, Send

from llmctl.router import sse
from llmctl.router.errors import SERVER, RouterError
from llmctl.router.scheduler import Progress, ProgressFn
from llmctl.router.transport.base import StreamBroken

log = logging.getLogger("llmctl.router")

UPSTREAM_HEADER = "x-llmctl-upstream"
PROFILE_HEADER = "x-llmctl-profile"
LOAD_HEADER_B = b"x-llmctl-load"  # on an answer that waited for a load of its profile
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# the hops header is set anew for a host (type llmctl), and means nothing to anyone else
_REQUEST_DROP = _HOP | {
    "authorization",
    "accept-encoding",
    "x-api-key",
    "cookie",
    "expect",
    "x-llmctl-hops",
}
# a host's (type llmctl) own x-llmctl-upstream names its upstream; this router names the host
_RESPONSE_DROP = _HOP | {"server", "date", "content-encoding", "x-llmctl-upstream"}
UPSTREAM_HEADER_B = UPSTREAM_HEADER.encode()
_REQUEST_DROP_B = frozenset(h.encode() for h in _REQUEST_DROP)
_RESPONSE_DROP_B = frozenset(h.encode() for h in _RESPONSE_DROP)

Outcome = Literal["ok", "upstream_error", "client_gone"]


def load_header(profile: str, waited_s: float, stage: str) -> bytes:
    """`profile=b; waited=5.21; stage=ready` (a profile name that is no token is quoted)."""
    name = profile if _TOKEN.fullmatch(profile) else json.dumps(profile, ensure_ascii=False)
    return f"profile={name}; waited={waited_s:.2f}; stage={stage}".encode()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def request_headers(
    headers: Iterable[tuple[bytes, bytes]], api_key: str | None
) -> list[tuple[bytes, bytes]]:
    """The client's headers (lower-case names, as ASGI gives them) minus hop-by-hop ones and its
    credentials; the upstream's key added."""
    out = [(k, v) for k, v in headers if k not in _REQUEST_DROP_B]
    if api_key:
        out.append((b"authorization", b"Bearer " + api_key.encode()))
    return out


class Reply:
    """An upstream response whose headers and first chunk have arrived; the rest streams on.

    `rest` raises StreamBroken when the upstream fails mid-response.
    """

    def __init__(
        self,
        upstream: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        first: bytes,
        rest: AsyncIterator[bytes],
        closer: Callable[[], Awaitable[None]],
    ) -> None:
        self.upstream = upstream
        self.status = status
        self.headers = headers
        self.first = first
        self.rest = rest
        self._closer = closer
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.tail = b""  # the end of the body once relayed, where an answer's "usage" is
        # what the relay asks of the headers, read in one pass
        encoding = length = content_type = None
        for name, v in headers:  # lower-case names (the `Transport` contract)
            if name == b"content-encoding":
                encoding = v if encoding is None else encoding
            elif name == b"content-length":
                length = v if length is None else length
            elif name == b"content-type":
                content_type = v if content_type is None else content_type
        self._encoded = encoding is not None
        # the first chunk is the whole body (a known length, all of it read)
        self.complete = (
            not self._encoded
            and length is not None
            and length.isdigit()
            and len(first) == int(length)
        )
        self.is_sse = (content_type or b"").startswith(b"text/event-stream")

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        # the body is relayed decoded: its length holds only when the upstream did not compress it
        encoded = self._encoded
        out: list[tuple[bytes, bytes]] = []
        for name, v in self.headers:
            if name == b"content-length":
                if encoded:
                    continue
            elif name in _RESPONSE_DROP_B:
                continue
            out.append((name, v))
        out.append((UPSTREAM_HEADER_B, self.upstream.encode()))
        out.extend(self.extra_headers)
        if self.is_sse:
            out.append((b"x-accel-buffering", b"no"))
        return out

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.rest.aclose()  # type: ignore[attr-defined]
        await self._closer()


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> bool:
    """Cancel `task` when the client disconnects; True once it has."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return True


async def _pipe(
    send: Send, reply: Reply, *, sse_errors: bool, finish: Callable[[Outcome], None]
) -> Outcome:
    """Write the reply's body; on an upstream failure after bytes went out, end the stream visibly.

    `finish` runs before the body's end goes out, so whoever has read the whole answer finds
    it recorded (metrics, recent requests) already.
    """
    if reply.first:
        await send({"type": "http.response.body", "body": reply.first, "more_body": True})
    # the usage object may be in the first chunk when the rest is only `data: [DONE]`
    prev, last = b"", reply.first
    try:
        async for chunk in reply.rest:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                prev, last = last, chunk
    except StreamBroken as exc:
        log.warning("upstream %s failed mid-stream: %s", reply.upstream, exc)
        finish("upstream_error")
        if sse_errors:
            err = RouterError(
                502,
                f"The upstream {reply.upstream!r} failed during the response: {exc}",
                type=SERVER,
                code="upstream_error",
            )
            await send(
                {"type": "http.response.body", "body": sse.error_event(err), "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # any other body is left incomplete, which the client sees as a broken response
        return "upstream_error"
    reply.tail = (prev[-4096:] + last)[-8192:]
    finish("ok")
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return "ok"


Opener = Callable[[Callable[[Progress], None]], Awaitable[Reply]]
DoneFn = Callable[[Outcome, "Reply | None", "RouterError | None"], None]


class RelayResponse:
    """ASGI response that relays `reply` (known now) to the client, watching for a disconnect."""

    def __init__(self, reply: Reply, on_done: DoneFn) -> None:
        self.reply = reply
        self.done = _Once(on_done)
        self.started = False  # the response's start went out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = self.reply
        if reply.complete:
            # the whole body is here already: nothing to watch, nothing to cancel upstream
            try:
                start = self._start()
                async for _ in reply.rest:  # lets the connection go back to the pool
                    pass
            except BaseException:
                await self._close()
                raise
            self.done("ok", reply)
            try:
                self.started = True
                await send(start)
                await send({"type": "http.response.body", "body": reply.first, "more_body": False})
            finally:
                await reply.aclose()  # nothing left to read or cancel: no await to shield
                self.done("client_gone", reply)
            return
        # a client that leaves cancels the relay (this task), which closes the upstream response
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, task))
        try:
            start = self._start()
            self.started = True
            await send(start)
            await _pipe(send, reply, sse_errors=reply.is_sse, finish=self._finish)
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled() and watcher.result()):
                raise
            task.uncancel()  # the client left: the relay ends here, nothing to raise
        finally:
            watcher.cancel()
            await self._close()

    def _start(self) -> Message:
        reply = self.reply
        return {
            "type": "http.response.start",
            "status": reply.status,
            "headers": reply.raw_headers(),
        }

    async def _close(self) -> None:
        # no shield: the lean pool's close does not wait, httpx shields its own
        try:
            await self.reply.aclose()
        finally:
            self.done("client_gone", self.reply)

    def _finish(self, outcome: Outcome) -> None:
        self.done(outcome, self.reply)


class _Once:
    """Calls a DoneFn once: at the answer's end (before its last bytes go out) or, for an
    answer cut short, when the response ends."""

    def __init__(self, on_done: DoneFn) -> None:
        self.on_done = on_done
        self.called = False

    def __call__(
        self, outcome: Outcome, reply: Reply | None, error: RouterError | None = None
    ) -> None:
        if not self.called:
            self.called = True
            self.on_done(outcome, reply, error)


class WaitingStreamResponse:
    """An event stream for a streaming client that must wait for a switch.

    Nothing is sent while the request only waits in the queue: a refusal known before any byte
    (a full queue, an open breaker, a timeout in the queue) is answered like a non-streaming
    request, with its status and Retry-After. Once the switch makes progress (or a heartbeat
    is due), the 200 event stream starts; each progress step and a periodic heartbeat go out as
    SSE comment lines (`: loading ...`), so the client's read timeout never fires, and an error
    from then on becomes an SSE error event.
    """

    def __init__(
        self,
        opener: Opener,
        on_done: DoneFn,
        *,
        heartbeat: float = 5.0,
        loading_state: str | None = None,
        profile: str | None = None,
    ) -> None:
        self.opener = opener
        self.profile = profile  # the profile it waits for, named in the load header
        self._since = time.monotonic()
        self._last: Progress | None = None
        self.done = _Once(on_done)
        self.heartbeat = heartbeat
        # the model name of a chat stream that shows the load as reasoning (serve.loading_state)
        self.loading_state = loading_state
        self._started = False
        self._held: list[Progress] = []

    @property
    def started(self) -> bool:
        """The response's start went out."""
        return self._started

    async def _start(self, send: Send, reply: Reply | None = None) -> None:
        if self._started:
            return
        self._started = True
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *((k.lower().encode(), v.encode()) for k, v in sse.SSE_HEADERS.items()),
        ]
        if reply is not None:  # answered before any step went out: the reply's own account
            headers += [h for h in reply.extra_headers if h[0] == LOAD_HEADER_B]
        elif self.profile and self._last is not None:  # still waiting: the stage so far
            waited = time.monotonic() - self._since
            headers.append((LOAD_HEADER_B, load_header(self.profile, waited, self._last.kind)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        held, self._held = self._held, []
        for p in held:
            await self._progress(send, p)

    async def _progress(self, send: Send, p: Progress) -> None:
        self._last = p
        if not self._started:
            if p.kind == "queued":
                self._held.append(p)  # may still end in a refusal with its own status
                return
            await self._start(send)
        body = sse.comment(f"{p.kind} {p.message}")
        if self.loading_state is not None and p.kind != "loading":  # not every log line
            body += sse.reasoning_chunk(self.loading_state, f"{p.message}\n")
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply: Reply | None = None
        error: RouterError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                reply, error = await self._wait(send)
                if error is not None:
                    self.done("ok", None, error)
                    if self._started:
                        body = sse.error_event(error)
                        await send({"type": "http.response.body", "body": body, "more_body": False})
                    else:
                        await error.response()(scope, receive, send)
                elif reply is not None:
                    await self._start(send, reply)
                    await self._relay(send, reply)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if reply is not None:
                    await reply.aclose()
                self.done("client_gone", reply, error)

    async def _wait(self, send: Send) -> tuple[Reply | None, RouterError | None]:
        events: asyncio.Queue[Progress] = asyncio.Queue()
        task = asyncio.ensure_future(self.opener(events.put_nowait))
        started = time.monotonic()
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                try:
                    done, _ = await asyncio.wait(
                        {task, getter}, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter in done:
                    await self._progress(send, getter.result())
                elif not done:
                    waited = time.monotonic() - started
                    await self._start(send)
                    body = sse.comment(f"loading ... {waited:.0f} s")
                    if self.loading_state is not None:
                        body += sse.reasoning_chunk(
                            self.loading_state, f"still loading ({waited:.0f} s)\n"
                        )
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        while not events.empty():
            await self._progress(send, events.get_nowait())
        exc = task.exception()
        if isinstance(exc, RouterError):
            return None, exc
        if exc is not None:
            raise exc
        return task.result(), None

    async def _relay(self, send: Send, reply: Reply) -> None:
        # the headers went out before the upstream was known: name it (and the profile) here
        named = " ".join(f"{k.decode()}={v.decode()}" for k, v in reply.extra_headers)
        await send(
            {
                "type": "http.response.body",
                "body": sse.comment(f"upstream {reply.upstream} {named}".rstrip()),
                "more_body": True,
            }
        )
        if reply.status >= 400 or not reply.is_sse:
            # the status line is sent already: carry the upstream's answer as one event
            try:
                data = reply.first + b"".join([c async for c in reply.rest])
            except StreamBroken:
                data = reply.first
            self.done("ok", reply)
            if reply.status >= 400:
                err = error_from_body(
                    reply.status, data, f"upstream {reply.upstream} answered {reply.status}"
                )
                await send(
                    {"type": "http.response.body", "body": sse.error_event(err), "more_body": False}
                )
            else:
                text = data.decode("utf-8", "replace")
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse.event(text) + sse.DONE,
                        "more_body": False,
                    }
                )
            return
        await _pipe(send, reply, sse_errors=True, finish=lambda outcome: self.done(outcome, reply))


def error_from_body(status: int, body: bytes, fallback: str) -> RouterError:
    """An upstream's error response as a RouterError, keeping its OpenAI fields when it has them."""
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return RouterError(
            status,
            str(err.get("message") or fallback),
            type=str(err.get("type") or SERVER),
            code=None if err.get("code") is None else str(err.get("code")),
            param=err.get("param") if isinstance(err.get("param"), str) else None,
        )
    text = body.decode("utf-8", "replace").strip()[:500] if body else ""
    return RouterError(
        status, f"{fallback}: {text}" if text else fallback, type=SERVER, code="upstream_error"
    )


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
