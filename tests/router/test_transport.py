"""The upstream transports on their own: the lean HTTP/1.1 pool against a raw socket server that
sends exactly the bytes a test gives it, and both transports (lean and httpx) behind open_reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from llmctl.router.proxy import open_reply
from llmctl.router.transport.base import StreamBroken, UpstreamFailure, lean_capable
from llmctl.router.transport.loopback import ConnectFailed, Pool
from llmctl.router.transport.remote import RemoteTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on loopback whose connections run `handler`; yields its port."""
    conns: list[asyncio.Task[None]] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conns.append(task)
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # swallowed, so the stream's own done-callback sees a clean end
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for t in conns:
            t.cancel()
        await asyncio.gather(*conns, return_exceptions=True)
        await server.wait_closed()


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await r.readexactly(length) if length else b""
    return head, body


def canned(*responses: bytes, close: bool = False) -> tuple[Handler, list[bytes]]:
    """Answer each request on a connection with the next canned response."""
    seen: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for resp in responses:
            head, body = await read_request(r)
            seen.append(head + body)
            w.write(resp)
            await w.drain()
            if close:
                return
        await r.read()  # keep the connection open until the client closes it

    return handler, seen


async def collect(resp: Any) -> bytes:
    return b"".join([c async for c in resp.body()])


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_content_length_keep_alive_reuses_the_connection() -> None:
    async def main() -> None:
        ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        handler, seen = canned(ok, ok, ok)
        async with raw_server(handler) as port:
            pool = Pool()
            for _ in range(3):
                resp = await pool.request(
                    "127.0.0.1", port, "POST", "/v1/x?y=1", [(b"x-a", b"b")], b'{"m":1}'
                )
                assert resp.status == 200 and resp.header(b"content-type") == b"application/json"
                assert await collect(resp) == b"{}"
            pool.close()
        assert len(seen) == 3  # one connection served all three
        assert seen[0].startswith(b"POST /v1/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:")
        assert (
            b"x-a: b\r\n" in seen[0]
            and b"content-length: 7\r\n" in seen[0]
            and seen[0].endswith(b'{"m":1}')
        )

    run(main())


def test_chunked_body_with_extensions_and_trailers() -> None:
    async def main() -> None:
        resp_bytes = (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
        )
        handler, _ = canned(resp_bytes, resp_bytes)
        async with raw_server(handler) as port:
            pool = Pool()
            for _ in range(2):
                resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
                chunks = [c async for c in resp.body()]
                assert chunks == [b"hello", b" ", b"world"]
            pool.close()

    run(main())


def test_interim_responses_are_skipped() -> None:
    async def main() -> None:
        handler, _ = canned(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        )
        async with raw_server(handler) as port:
            pool = Pool()
            resp = await pool.request("127.0.0.1", port, "POST", "/", [], b"x")
            assert resp.status == 200 and await collect(resp) == b"ok"
            pool.close()

    run(main())


def test_body_until_close_and_bodyless_statuses() -> None:
    async def main() -> None:
        handler, _ = canned(b"HTTP/1.0 200 OK\r\n\r\nall of it", close=True)
        async with raw_server(handler) as port:
            pool = Pool()
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
            assert await collect(resp) == b"all of it"
        handler, _ = canned(
            b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        )
        async with raw_server(handler) as port:
            resp = await pool.request("127.0.0.1", port, "DELETE", "/", [], b"")
            assert resp.status == 204 and await collect(resp) == b""
            resp = await pool.request("127.0.0.1", port, "HEAD", "/", [], b"")
            assert await collect(resp) == b""
        pool.close()

    run(main())


def test_stale_pooled_connection_is_retried_once() -> None:
    async def main() -> None:
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        handler, seen = canned(ok, close=True)  # the server closes after each answer
        async with raw_server(handler) as port:
            pool = Pool()
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
            assert await collect(resp) == b"ok"
            await asyncio.sleep(0.05)
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
            assert await collect(resp) == b"ok"
            pool.close()
        assert len(seen) == 2

    run(main())


def test_failures_are_typed() -> None:
    async def main() -> None:
        pool = Pool()
        async with raw_server(canned()[0]) as port:
            pass
        with pytest.raises(ConnectFailed):
            await pool.request("127.0.0.1", port, "GET", "/", [], b"")

        # closes without answering
        async def hangup(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)

        async with raw_server(hangup) as port:
            with pytest.raises(StreamBroken, match="before answering"):
                await pool.request("127.0.0.1", port, "GET", "/", [], b"")
        # not HTTP
        handler, _ = canned(b"SSH-2.0-OpenSSH\r\n\r\n")
        async with raw_server(handler) as port:
            with pytest.raises(StreamBroken, match="not an HTTP response"):
                await pool.request("127.0.0.1", port, "GET", "/", [], b"")
        # dies mid-body (content-length and chunked)
        for partial in (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ):
            handler, _ = canned(partial, close=True)
            async with raw_server(handler) as port:
                resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
                with pytest.raises(StreamBroken):
                    await collect(resp)
                await resp.aclose()

        # a silent upstream trips the read timeout between chunks
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await asyncio.sleep(5)

        async with raw_server(silent) as port:
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"", read_timeout=0.1)
            with pytest.raises(StreamBroken, match="no data"):
                await collect(resp)
            await resp.aclose()

        # and between the chunks of a chunked body (one deadline per chunk)
        async def silent_chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\n")
            await asyncio.sleep(5)

        async with raw_server(silent_chunked) as port:
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"", read_timeout=0.1)
            chunks = resp.body()
            assert await anext(chunks) == b"abc"
            with pytest.raises(StreamBroken, match="no data"):
                await anext(chunks)
            await resp.aclose()
        pool.close()

    run(main())


def test_read_deadline_moves_with_each_chunk_and_follows_a_shorter_timeout() -> None:
    """One timer per connection: a stream that outlasts the read timeout chunk by chunk is not
    cut, and the next request on the same connection keeps its own (shorter) timeout."""

    async def main() -> None:
        async def trickle_then_silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(12):  # 1.2 s in all, each gap a tenth of the read timeout
                await asyncio.sleep(0.1)
                w.write(b"1\r\nx\r\n")
            w.write(b"0\r\n\r\n")
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\ny\r\n")
            await r.read()

        pool = Pool()
        async with raw_server(trickle_then_silent) as port:
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"", read_timeout=1.0)
            assert await collect(resp) == b"x" * 12
            resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"", read_timeout=0.1)
            chunks = resp.body()
            assert await anext(chunks) == b"y"
            async with asyncio.timeout(0.9):  # the first request's 1 s would land past this
                with pytest.raises(StreamBroken, match="no data"):
                    await anext(chunks)
            await resp.aclose()
        pool.close()

    run(main())


# --- open_reply over both transports -----------------------------------------------------------


def sse_handler(mode: str) -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            if mode == "500":
                body = b'{"error":{"message":"broken","type":"server_error"}}'
                w.write(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
            elif mode == "hang":
                await asyncio.sleep(10)
            elif mode in ("ok", "die"):
                w.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                w.write(b"9\r\ndata: 1\n\n\r\n")
                await w.drain()
                if mode == "die":
                    return
                w.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
            elif mode == "headers-then-hang":
                w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                await w.drain()
                await asyncio.sleep(10)
            await w.drain()

    return handler


@pytest.mark.parametrize("kind", ["lean", "httpx"])
def test_open_reply_behaviour(kind: str) -> None:
    async def main() -> None:
        async def transport() -> Any:
            return Pool() if kind == "lean" else RemoteTransport(httpx.AsyncClient(trust_env=False))

        async def open_(port: int, timeout: float = 2.0) -> Any:
            t = await transport()
            try:
                return t, await open_reply(
                    t,
                    upstream="u",
                    url=f"http://127.0.0.1:{port}/v1/chat/completions",
                    method="POST",
                    headers=[(b"content-type", b"application/json")],
                    body=b"{}",
                    timeout=timeout,
                )
            except BaseException:
                await close(t)
                raise

        async def close(t: Any) -> None:
            if isinstance(t, Pool):
                t.close()
            else:
                await t.aclose()

        async with raw_server(sse_handler("ok")) as port:
            t, reply = await open_(port)
            assert reply.status == 200 and reply.is_sse and not reply.complete
            assert reply.first == b"data: 1\n\n"
            assert [c async for c in reply.rest] == [b"data: 2\n\n"]
            names = [k.lower() for k, _ in reply.raw_headers()]
            assert (
                b"x-llmctl-upstream" in names
                and b"transfer-encoding" not in names
                and b"x-accel-buffering" in names
            )
            await reply.aclose()
            await close(t)
        async with raw_server(sse_handler("500")) as port:
            with pytest.raises(UpstreamFailure) as info:
                await open_(port)
            assert (
                info.value.reason == "status"
                and info.value.status == 500
                and b"broken" in info.value.body
            )
        for mode in ("hang", "headers-then-hang"):
            async with raw_server(sse_handler(mode)) as port:
                with pytest.raises(UpstreamFailure) as info:
                    await open_(port, timeout=0.2)
                assert info.value.reason == "timeout", mode
        async with raw_server(sse_handler("die")) as port:
            t, reply = await open_(port)
            with pytest.raises(StreamBroken):
                async for _ in reply.rest:
                    pass
            await reply.aclose()
            await close(t)
        async with raw_server(canned()[0]) as port:
            pass
        with pytest.raises(UpstreamFailure) as info:
            await open_(port)
        assert info.value.reason == "connect"

    run(main())


def test_lean_transport_only_for_plain_loopback() -> None:
    assert lean_capable("http://127.0.0.1:8081")
    assert lean_capable("http://localhost:8081/v1/chat/completions")
    assert not lean_capable("https://127.0.0.1:8081")
    assert not lean_capable("http://gpu-box:8080")
    assert not lean_capable("https://api.openai.com/v1/chat/completions")


def test_bodies_larger_than_the_read_buffer_arrive_whole() -> None:
    """Past twice the head limit unread the connection stops reading and resumes as the body is
    taken: a 1 MiB body, by length and as one chunk, arrives byte for byte."""

    async def main() -> None:
        big = bytes(range(256)) * 4096
        by_length = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big)
        one_chunk = (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (
                len(big),
                big,
            )
        )
        handler, _ = canned(by_length, one_chunk)
        async with raw_server(handler) as port:
            pool = Pool()
            for _ in range(2):
                resp = await pool.request("127.0.0.1", port, "GET", "/", [], b"")
                got = b""
                async for chunk in resp.body():
                    got += chunk
                    await asyncio.sleep(0)  # a slow reader: the upstream's bytes pile up
                assert got == big
            pool.close()

    run(main())
