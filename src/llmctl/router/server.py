"""Running the router: bind checks, uvicorn, signals.

Client connections are bounded where uvicorn leaves them open: a client has `serve.header_timeout`
to send its request line and headers (slowloris), and at most `serve.max_connections` are open
(below the open-file limit); beyond it, the connection that has waited longest for its headers is
closed, so `/health` and real requests keep getting through.

SIGTERM and SIGINT stop accepting connections, fail the requests still queued for a switch,
let in-flight requests finish (at most `serve.drain_timeout`), then stop the llama-server the
router started (`serve.stop_server_on_exit`). SIGHUP reloads the manifest; a broken manifest is
reported and the previous one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import signal
import socket
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmctl.errors import LlmctlError, UsageError
from llmctl.llama.endpoints import cors_headers
from llmctl.manifest.model import ServeConfig
from llmctl.router.app import create_app
from llmctl.router.auth import serve_keys
from llmctl.router.backends import LAUNCHER
from llmctl.router.origins import is_loopback_name
from llmctl.router.runtime import BODY_IN, Router

log = logging.getLogger("llmctl.router")


def check_bind(
    host: str, serve: ServeConfig, keys: tuple[str, ...], *, allow_insecure: bool
) -> None:
    """Refuse to listen beyond loopback without API keys (`keys`: those `serve` accepts), unless
    told explicitly."""
    if is_loopback_name(host) or keys or allow_insecure or serve.allow_insecure_bind:
        return
    raise UsageError(
        f"refusing to listen on {host} without API keys: anyone who can reach this machine could "
        "use and switch its models",
        hint="set serve.api_keys or the LLMCTL_API_KEYS environment variable (comma-separated), "
        "or pass --allow-insecure if the network is trusted",
    )


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it a response written in two parts (headers, body) waits out the client's
    # delayed ACK on every keep-alive request (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LlmctlError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another program may hold the port; choose another with --port or serve.port",
        ) from None
    sock.set_inheritable(False)
    return sock


def default_max_connections() -> int:
    """Below the open-file limit: each client connection may hold an upstream one too, and the
    router needs files for its logs, state and llama-server's pipes."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(8, min(10000, (soft - 64) // 2))


class _HeaderGuard:
    """One connection's deadline for its request line and headers (slowloris).

    Arming is an attribute write: one timer per connection stays pending while it is in use and,
    when it fires, finds the deadline of the wait then under way (or none), so that a keep-alive
    connection costs no timer per request."""

    __slots__ = ("loop", "timeout", "timer", "transport", "waiting_since")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, timeout: float
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None

    def arm(self) -> None:
        """Headers are due now (a new connection, or the next request on a keep-alive one)."""
        self.waiting_since = now = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.timeout, self._check)

    def disarm(self) -> None:
        """The headers are in (the body has serve.body_timeout): the pending timer finds no wait."""
        self.waiting_since = None

    def _check(self) -> None:
        self.timer = None
        since = self.waiting_since
        if since is None:
            return  # armed again by the next wait
        due = since + self.timeout
        if self.loop.time() >= due:
            self.drop()
        else:
            self.timer = self.loop.call_at(due, self._check)

    def close(self) -> None:
        """The connection is gone."""
        self.waiting_since = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def drop(self) -> None:
        """Close a connection that sent no complete request in time (or lost its place)."""
        self.close()
        if not self.transport.is_closing():
            self.transport.close()


# uvicorn's httptools protocol writes header names in lower case; llama-server spells its CORS
# headers in title case, and clients that read headers into a plain dict see the difference
_SPELLED = [
    (b"\r\n" + name.lower() + b":", b"\r\n" + name + b":")
    for name, _ in cors_headers("", preflight=True)
]


class _ClientTransport(asyncio.Transport):
    """A client connection's transport that writes a response head together with what follows it
    (one send, one segment for the client, where uvicorn writes the head and the body apart) and
    the CORS header names of a head as llama-server spells them.

    A head is held until the next write or the end of the event loop's turn, whichever is first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data[:5] == b"HTTP/":
            head = bytes(data)
            if b"\r\naccess-control-" in head:
                for lower, spelled in _SPELLED:
                    head = head.replace(lower, spelled)
            if self._head is not None:
                self._transport.write(self._head)
            else:
                self._loop.call_soon(self._flush)
            self._head = head
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


def _cap_connections(connections: Iterable[object], limit: int, newest: _HeaderGuard) -> None:
    """Over the limit: close the connection that has waited longest for its headers."""
    guards = [getattr(c, "guard", None) for c in connections]
    if len(guards) <= limit:
        return
    waiting = [g for g in guards if isinstance(g, _HeaderGuard) and g.waiting_since is not None]
    oldest = min(waiting, key=lambda g: g.waiting_since or 0.0, default=newest)
    log.debug("connection limit (%d) reached: closing one still without a request", limit)
    oldest.drop()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol (pure Python, where httptools does not install) with a deadline
    for request headers and a cap on connections."""

    header_timeout = 10.0
    max_connections = 1000
    guard: _HeaderGuard

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard = _HeaderGuard(self.loop, transport, self.header_timeout)
        self.guard.arm()
        _cap_connections(self.connections, self.max_connections, self.guard)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.guard.waiting_since is not None and self.conn.their_state is not h11.IDLE:
            self.guard.disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.guard.arm()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.close()
        super().connection_lost(exc)


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with the same guard, or None where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency where it installs
        return None

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol (its C parser costs a fraction of h11's pure Python on
        every request) with a deadline for request headers and a cap on connections."""

        header_timeout = 10.0
        max_connections = 1000
        guard: _HeaderGuard

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            transport = _ClientTransport(transport, self.loop)
            super().connection_made(transport)
            self.guard = _HeaderGuard(self.loop, transport, self.header_timeout)
            self.guard.arm()
            _cap_connections(self.connections, self.max_connections, self.guard)

        def on_headers_complete(self) -> None:
            self.guard.disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.scope[BODY_IN] = True  # type: ignore[literal-required]

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # its headers are in: it starts now, no deadline
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self.guard.arm()  # the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self.guard.close()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def guarded_protocol(serve: ServeConfig, *, pure: bool = False) -> type[asyncio.Protocol]:
    """The HTTP protocol for the router's clients: httptools where it installs (`pure`: h11)."""
    limit = serve.max_connections or default_max_connections()
    attrs = {"header_timeout": serve.header_timeout, "max_connections": limit}
    base = None if pure else _httptools_protocol()
    if base is None:
        return type("RouterH11Protocol", (GuardedH11Protocol,), attrs)
    return type("RouterHttpToolsProtocol", (base,), attrs)


def uvicorn_options(serve: ServeConfig) -> dict[str, Any]:
    """How uvicorn serves the router's connections: its HTTP protocol and event loop (uvloop
    where it installs, which uvicorn's "auto" picks)."""
    return {"http": guarded_protocol(serve), "loop": "auto", "server_header": False}


class RouterServer(uvicorn.Server):
    """uvicorn with the router's signal handling on top."""

    def __init__(self, config: uvicorn.Config, router: Router) -> None:
        super().__init__(config)
        self.router = router
        self._loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "signal %s: draining (at most %g s)",
                signal.Signals(sig).name,
                self.router.serve.drain_timeout,
            )
            self.router.shutting_down = True
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self.router.scheduler.close)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            self._loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        log.info("SIGHUP: reloading the manifest")
        task = asyncio.ensure_future(self.router.reload())
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())


class _ShortNames(logging.Filter):
    """uvicorn logs its life cycle as `uvicorn.error`; call it `uvicorn`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error":
            record.name = "uvicorn"
        return True


_SECRET_PARAM = re.compile(
    r"([?&](?:[^=&]*(?:key|token|secret|password|passwd|auth|signature|sig))=)[^&\s]*", re.I
)


def redact_query(text: str) -> str:
    """A request target with the values of credential-like query parameters masked."""
    return _SECRET_PARAM.sub(r"\1***", text)


class _RedactAccess(logging.Filter):
    """uvicorn's access log shows the full request target: a client may put a key in its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ShortNames())
    handler.addFilter(_RedactAccess())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO: too chatty, and a URL may carry a credential
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(
    manifest_path: Path | None,
    *,
    host: str | None = None,
    port: int | None = None,
    allow_insecure: bool = False,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve until a signal says stop. Raises LlmctlError for what a user can fix."""
    from llmctl import paths
    from llmctl.manifest.discover import find_manifest
    from llmctl.manifest.validate import load_manifest
    from llmctl.supervisor.lifecycle import Supervisor

    _setup_logging(log_level)
    path = find_manifest(manifest_path)
    manifest = load_manifest(path)
    serve = manifest.serve
    keys = serve_keys(serve)
    host = host or serve.host
    port = serve.port if port is None else port
    check_bind(host, serve, keys, allow_insecure=allow_insecure)
    sock = bind_socket(host, port)
    supervisor = Supervisor(
        paths.state_dir(), lock_timeout=max(30.0, serve.queue.timeout), started_by=LAUNCHER
    )
    app = create_app(manifest, supervisor, manifest_path=path)
    router: Router = app.state.router
    # every reload must keep the rule that opened this socket: no open bind without keys
    router.bind_check = partial(check_bind, host, allow_insecure=allow_insecure)
    router.bound_to(host)
    config_kw: dict[str, Any] = {
        "lifespan": "on",
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": max(1, math.ceil(serve.drain_timeout)),
        **uvicorn_options(serve),
        "log_config": None,  # uvicorn's lines go through the same handler and format as ours
    }
    config = uvicorn.Config(app, host=host, port=port, **config_kw)
    server = RouterServer(config, router)
    auth = f"{len(keys)} API key(s)" if keys else "no API keys"
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "llmctl serve on http://%s:%d/v1 (%s; manifest %s; %d profile(s); upstreams: %s)",
        shown,
        port,
        auth,
        path,
        len(router.index.profiles),
        ", ".join(u.name for u in router.upstreams.all) if router.upstreams else "-",
    )
    log.info("dashboard: http://%s:%d/ui", shown, port)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
