"""The one contract between the proxy and a transport, and the failures a transport reports.

A transport sends a request and returns as soon as the response's headers are in (`Opened`);
it maps its own errors, in one place each: `UpstreamFailure` when no response came (connect,
timeout, transport), `StreamBroken` from the body's chunks when the response broke off. The
caller (`proxy.open_reply`) never asks which transport it got. The transport keeps one deadline
for the headers and the body's first chunk (`timeout` from the send: a late first chunk raises
TimeoutError from the chunks), and times out each later read (no data for `timeout`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit


class UpstreamFailure(Exception):
    """This upstream cannot serve the request; the next one in the chain may."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        content_type: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.body = body
        self.content_type = content_type


class StreamBroken(Exception):
    """The upstream closed or broke the connection before the response was complete."""


# An upstream response once its headers are in: status, headers (names in lower case), the
# body's chunks (raising StreamBroken), and how to close it.
Opened = tuple[int, list[tuple[bytes, bytes]], AsyncIterator[bytes], Callable[[], Awaitable[None]]]


class Transport(Protocol):
    async def send(
        self,
        url: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Opened:
        """Send; raise UpstreamFailure when no response comes (connect, transport, or no headers
        within `timeout`)."""
        ...

    async def aclose(self) -> None: ...


@functools.lru_cache(maxsize=256)
def split_url(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path (without its trailing slash) of `url`."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "127.0.0.1", port, parts.path.rstrip("/")


def lean_capable(url: str) -> bool:
    """Plain http to loopback: served by the lean client."""
    scheme, host, _, _ = split_url(url)
    return scheme == "http" and (host in ("localhost", "::1") or host.startswith("127."))
