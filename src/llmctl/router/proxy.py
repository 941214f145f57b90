"""One request to one upstream: `open_reply` sends it over a transport and waits for the
headers and the first chunk; a connect error, a timeout or a 5xx is an `UpstreamFailure`, so
that the exchange can try the next upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from llmctl.router.breaker import server_failed
from llmctl.router.relay import Reply
from llmctl.router.transport.base import StreamBroken, Transport, UpstreamFailure


async def open_reply(
    transport: Transport,
    *,
    upstream: str,
    url: str,
    method: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    timeout: float,
) -> Reply:
    """Send the request; wait (at most `timeout`) for the headers and the first body chunk.

    Raises UpstreamFailure on a connect error, a timeout or a 5xx, so the caller can try the next
    upstream; returns other statuses (4xx too) as they are. The transport (the lean pool for
    loopback, httpx elsewhere) sends, keeps the one deadline of the headers and the first chunk
    (no timer of its own per request here) and maps its own errors; the classification is here.
    """
    deadline = time.monotonic() + timeout
    status, raw, chunks, closer = await transport.send(url, method, headers, body, timeout)
    if server_failed(status):
        raise await _failure_for_status(status, raw, chunks, deadline, closer)
    try:
        first = await anext(chunks, b"")
    except TimeoutError:
        await closer()
        raise UpstreamFailure("timeout", f"no response body within {timeout:g} s") from None
    except StreamBroken as exc:
        await closer()
        raise UpstreamFailure("transport", f"failed before the first byte: {exc}") from None
    except BaseException:
        await closer()
        raise
    return Reply(upstream, status, raw, first, chunks, closer)


async def _failure_for_status(
    status: int,
    headers: list[tuple[bytes, bytes]],
    chunks: AsyncIterator[bytes],
    deadline: float,
    closer: Callable[[], Awaitable[None]],
) -> UpstreamFailure:
    data = b""
    try:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            async for chunk in chunks:
                data += chunk
                if len(data) > 65536:
                    break
    except (TimeoutError, StreamBroken):
        pass
    finally:
        await closer()
    content_type = next(
        (v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), ""
    )
    return UpstreamFailure(
        "status", f"answered {status}", status=status, body=data[:65536], content_type=content_type
    )
