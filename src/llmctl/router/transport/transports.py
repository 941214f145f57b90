"""The transports of one router, each made on first use: the lean pool for plain http on this
machine, httpx for everything else (TLS, other hosts, an HTTP proxy from the environment)."""

from __future__ import annotations

from llmctl.router.transport.base import Transport, lean_capable
from llmctl.router.transport.loopback import Pool
from llmctl.router.transport.remote import RemoteTransport


class Transports:
    def __init__(self) -> None:
        self._pool: Pool | None = None
        self._remote: RemoteTransport | None = None

    def for_url(self, url: str) -> Transport:
        """Loopback plain http: the lean pool. Elsewhere httpx, which may use a proxy from the
        environment."""
        if lean_capable(url):
            if self._pool is None:
                self._pool = Pool()
            return self._pool
        if self._remote is None:
            self._remote = RemoteTransport()
        return self._remote

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        self._pool = None
        self._remote = None
