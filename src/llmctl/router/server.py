"""Running the router: bind checks, uvicorn, signals.

SIGTERM and SIGINT stop accepting connections, fail the requests still queued for a switch,
let in-flight requests finish (at most `serve.drain_timeout`), then stop the llama-server the
router started (`serve.stop_server_on_exit`). SIGHUP reloads the manifest; a broken manifest is
reported and the previous one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import signal
import socket
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from llmctl.errors import LlmctlError, UsageError
from llmctl.router.app import Router, create_app
from llmctl.router.settings import Settings

log = logging.getLogger("llmctl.router")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings, *, allow_insecure: bool) -> None:
    """Refuse to listen beyond loopback without API keys, unless told explicitly."""
    if is_loopback(host) or settings.api_keys or allow_insecure or settings.allow_insecure_bind:
        return
    raise UsageError(
        f"refusing to listen on {host} without API keys: anyone who can reach this machine could "
        "use and switch its models",
        hint="set serve.api_keys or the LLMCTL_API_KEYS environment variable (comma-separated), "
        "or pass --allow-insecure if the network is trusted",
    )


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
                self.router.settings.drain_timeout,
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


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ShortNames())
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
    from llmctl.manifest.model import find_manifest, load_manifest
    from llmctl.supervisor.lifecycle import Supervisor

    _setup_logging(log_level)
    path = find_manifest(manifest_path)
    manifest = load_manifest(path)
    settings = Settings.from_manifest(manifest)
    host = host or settings.host
    port = settings.port if port is None else port
    check_bind(host, settings, allow_insecure=allow_insecure)
    sock = bind_socket(host, port)
    supervisor = Supervisor(paths.state_dir(), lock_timeout=max(30.0, settings.queue_timeout))
    app = create_app(manifest, supervisor, manifest_path=path)
    router: Router = app.state.router
    # every reload must keep the rule that opened this socket: no open bind without keys
    router.bind_check = partial(check_bind, host, allow_insecure=allow_insecure)
    config_kw: dict[str, Any] = {
        "lifespan": "on",
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.drain_timeout)),
        "server_header": False,
        "log_config": None,  # uvicorn's lines go through the same handler and format as ours
    }
    config = uvicorn.Config(app, host=host, port=port, **config_kw)
    server = RouterServer(config, router)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API keys"
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
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
