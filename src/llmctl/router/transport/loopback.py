"""A lean HTTP/1.1 client with a keep-alive pool, for plain-http upstreams (the local llama-server).

httpx's connection pool costs milliseconds per request under concurrency (its assignment loop
is quadratic in pooled connections and retries busy ones); the router's hot path is loopback
HTTP/1.1 to llama-server, which needs none of what httpx adds. TLS upstreams (cloud APIs) and
those behind an HTTP proxy keep using httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

from llmctl.router.transport.base import Opened, StreamBroken, UpstreamFailure, split_url

_MAX_HEAD = 64 * 1024
_READ = 64 * 1024


class ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, DNS)."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the bytes it has received and a waiter for more. It reads like
    asyncio's StreamReader (the same exceptions: IncompleteReadError at the end of the stream,
    LimitOverrunError past `_MAX_HEAD` without a separator) but with no future per call and no
    copy of a body that arrived whole; past twice `_MAX_HEAD` unread, it stops reading the
    socket (a slow client slows the upstream, not the router's memory).

    `deadline` (loop time) bounds every wait for bytes: a read still waiting then raises
    TimeoutError. Moving it is an attribute write; one timer per connection stays pending and,
    when it fires, checks the deadline of the wait under way, so a stream's chunks cost no timer
    each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buf = b""
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.transport: asyncio.Transport | None = None
        self.deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # --- the protocol (the loop calls these) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        if not self._paused and len(self._buf) > 2 * _MAX_HEAD and self.transport is not None:
            self._paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes (or the end of the stream)."""
        if self._paused:
            self._resume()
        waiter = self._waiter = self._loop.create_future()
        deadline = self.deadline
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            self._arm(deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        deadline, waiter = self.deadline, self._waiter
        if deadline is None or waiter is None or waiter.done():
            return  # armed again by the next wait
        if self._loop.time() >= deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._arm(deadline)

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            self._buf = b""
        else:
            buf, self._buf = buf[:n], buf[n:]
        if self._paused and len(self._buf) <= _MAX_HEAD:
            self._resume()
        return buf

    def _ended(self, expected: int | None) -> BaseException:
        if self._exc is not None:
            return self._exc
        partial, self._buf = self._buf, b""
        return asyncio.IncompleteReadError(partial, expected)

    # --- reading (as StreamReader reads) ---

    async def readuntil(self, separator: bytes) -> bytes:
        start = 0
        while True:
            at = self._buf.find(separator, start)
            if at >= 0:
                return self._take(at + len(separator))
            if len(self._buf) > _MAX_HEAD:
                raise asyncio.LimitOverrunError("separator not found within the limit", 0)
            if self._eof:
                raise self._ended(None)
            start = max(0, len(self._buf) - len(separator) + 1)
            await self._more()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                raise self._ended(n)
            await self._more()
        return self._take(n)

    async def read(self, n: int) -> bytes:
        while not self._buf:
            if self._eof:
                if self._exc is not None:
                    raise self._exc
                return b""
            await self._more()
        return self._take(n)

    # --- writing ---

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    def usable(self) -> bool:
        return (
            not (self._eof and not self._buf)
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()


@dataclass
class Response:
    """Status and headers are read; the body streams from `body()` (call `aclose()` always)."""

    status: int
    headers: list[tuple[bytes, bytes]]  # names in lower case
    _conn: _Conn | None
    _pool: Pool
    _key: tuple[str, int]
    _length: int | None
    _chunked: bool
    _keep: bool
    _read_timeout: float | None
    _done: bool = field(default=False)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def _due(self, reader: _Conn, timed: bool) -> None:
        """The deadline of the next read: the read timeout from now; the first read keeps the
        request's (that of its headers, the `Transport` contract), and raises TimeoutError."""
        timeout = self._read_timeout
        if timed:
            reader.deadline = None if timeout is None else reader._loop.time() + timeout

    async def _read(self, reader: _Conn, n: int, *, exact: bool, timed: bool = True) -> bytes:
        self._due(reader, timed)
        try:
            data = await (reader.readexactly(n) if exact else reader.read(n))
        except TimeoutError:  # before OSError, its base class
            if not timed:
                raise  # before OSError, its base class
            raise StreamBroken(f"no data from the upstream for {self._read_timeout:g} s") from None
        except asyncio.IncompleteReadError as exc:
            raise StreamBroken("the upstream closed the connection mid-response") from exc
        except (ConnectionError, OSError) as exc:
            raise StreamBroken(f"the connection broke mid-response: {exc}") from exc
        return data

    async def body(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self._done:
            return
        reader = conn
        if self._chunked:
            first = True
            while True:
                self._due(reader, not first)  # one deadline per chunk, its size line and data
                data = await self._chunk(reader, first)
                first = False
                if data is None:
                    # trailers (usually none) end with an empty line
                    while True:
                        trailer = await self._read_line(reader)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    self._finish()
                    return
                yield data
        elif self._length is not None:
            remaining = self._length
            first = True
            while remaining > 0:
                data = await self._read(reader, min(remaining, _READ), exact=False, timed=not first)
                first = False
                if not data:
                    raise StreamBroken("the upstream closed the connection mid-response")
                remaining -= len(data)
                yield data
            self._finish()
        else:  # delimited by the end of the connection
            self._keep = False
            while True:
                data = await self._read(reader, _READ, exact=False)
                if not data:
                    break
                yield data
            self._finish()

    async def _chunk(self, reader: _Conn, first: bool) -> bytes | None:
        """The data of the next chunk of a chunked body; None for the last (empty) one."""
        try:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise StreamBroken("malformed chunked response from the upstream") from None
            if size == 0:
                return None
            data = await reader.readexactly(size + 2)
        except TimeoutError:  # before OSError, its base class
            if first:
                raise
            raise StreamBroken(f"no data from the upstream for {self._read_timeout:g} s") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise StreamBroken("the upstream closed the connection mid-response") from exc
        return data[:-2]

    async def _read_line(self, reader: _Conn) -> bytes:
        self._due(reader, True)
        try:
            return await reader.readuntil(b"\r\n")
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            OSError,
            TimeoutError,
        ):
            raise StreamBroken("the upstream closed the connection mid-response") from None

    def _finish(self) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.deadline = None
            if self._keep and conn.usable():
                self._pool.put(self._key, conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        """Give the connection back when the body was read whole, else close it (cancelling upstream)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Idle keep-alive connections per (host, port)."""

    def __init__(self, *, max_idle_per_host: int = 256) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self.max_idle = max_idle_per_host

    def put(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def _get(self, key: tuple[str, int], connect_timeout: float) -> tuple[_Conn, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                transport, conn = await loop.create_connection(lambda: _Conn(loop), key[0], key[1])
        except TimeoutError:
            raise ConnectFailed(f"connect to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}"
            ) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send one request and read the status line and headers.

        Raises ConnectFailed when no connection can be made, StreamBroken when the server
        closes before answering, and TimeoutError past `deadline` (loop time), which holds for
        the body's first read too. A pooled connection the server closed meanwhile is retried
        once on a fresh one (the request never reached the application).
        """
        key = (host, port)
        hostname = f"[{host}]" if ":" in host else host
        lines = [f"{method} {target} HTTP/1.1\r\nhost: {hostname}:{port}\r\n".encode()]
        lines.extend(k + b": " + v + b"\r\n" for k, v in headers)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        lines.append(b"\r\n")
        payload = b"".join(lines) + body
        for attempt in (0, 1):
            conn, reused = await self._get(key, connect_timeout)
            conn.deadline = deadline
            try:
                conn.write(payload)
                head = await conn.readuntil(b"\r\n\r\n")
                while (
                    head[9:10] == b"1" and head[9:12] != b"101"
                ):  # interim 1xx: the answer follows
                    head = await conn.readuntil(b"\r\n\r\n")
            except TimeoutError:  # before OSError, its base class
                conn.close()
                raise
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: try a fresh one
                raise StreamBroken(
                    f"the upstream closed the connection before answering: {exc}"
                ) from None
            except asyncio.LimitOverrunError:
                conn.close()
                raise StreamBroken("the upstream's response headers are too large") from None
            except BaseException:
                conn.close()
                raise
            return self._parse(head, conn, key, method, read_timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(
        self,
        head: bytes,
        conn: _Conn,
        key: tuple[str, int],
        method: str,
        read_timeout: float | None,
    ) -> Response:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            conn.close()
            raise StreamBroken(
                f"not an HTTP response from the upstream: {lines[0][:80]!r}"
            ) from None
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            lower = name.strip().lower()
            value = value.strip()
            if lower == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"connection":
                if b"close" in value.lower():
                    keep = False
                elif b"keep-alive" in value.lower():
                    keep = True
            headers.append((lower, value))
        if chunked:
            length = None
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            length, chunked = 0, False
        return Response(status, headers, conn, self, key, length, chunked, keep, read_timeout)

    async def send(
        self,
        url: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Opened:
        """The `Transport` contract: this pool's errors become UpstreamFailure here."""
        _, host, port, _ = split_url(url)
        target = url[url.index("/", url.index("//") + 2) :] if url.count("/") > 2 else "/"
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            response = await self.request(
                host, port, method, target, headers, body,
                connect_timeout=min(timeout, 10.0), read_timeout=timeout, deadline=deadline,
            )  # fmt: skip
        except TimeoutError:
            raise UpstreamFailure("timeout", f"no response within {timeout:g} s") from None
        except ConnectFailed as exc:
            raise UpstreamFailure("connect", str(exc)) from None
        except StreamBroken as exc:
            raise UpstreamFailure("transport", str(exc)) from None
        return response.status, response.headers, response.body(), response.aclose

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
