"""The httpx transport, for upstreams that are not plain http on this machine (TLS, other hosts,
an HTTP proxy from the environment). httpx's errors are mapped here and nowhere else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from llmctl.router.transport.base import Opened, StreamBroken, UpstreamFailure


def new_client(*, trust_env: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=trust_env,
        timeout=httpx.Timeout(600.0, connect=10.0),
        limits=httpx.Limits(
            max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0
        ),
        follow_redirects=False,
    )


class RemoteTransport:
    """A `Transport` over one httpx client (its own unless given one)."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client if client is not None else new_client(trust_env=True)

    async def send(
        self,
        url: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Opened:
        request = self.client.build_request(
            method,
            url,
            headers=headers,
            content=body,
            timeout=httpx.Timeout(
                connect=min(timeout, 10.0), read=timeout, write=timeout, pool=timeout
            ),
        )
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.client.send(request, stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamFailure("timeout", f"no response within {timeout:g} s") from None
        except httpx.ConnectError as exc:
            raise UpstreamFailure(
                "connect", f"cannot connect: {exc or type(exc).__name__}"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure("transport", f"{type(exc).__name__}: {exc}") from None
        return (
            response.status_code,
            [(k.lower(), v) for k, v in response.headers.raw],
            _chunks(response, deadline),
            response.aclose,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def _chunks(response: httpx.Response, deadline: float) -> AsyncIterator[bytes]:
    """The body's chunks; the first is due by `deadline` (TimeoutError), the others each within
    httpx's read timeout."""
    chunks = response.aiter_bytes()
    try:
        async with asyncio.timeout_at(deadline):
            first = await anext(chunks, None)
        if first is None:
            return
        yield first
        async for chunk in chunks:
            yield chunk
    except httpx.HTTPError as exc:
        raise StreamBroken(f"{type(exc).__name__}: {exc}") from exc
