"""The readiness probe: GET /health answers 200 once the model is loaded (503 while loading).

A raw socket, not http.client: importing http.client (email, ssl) would cost `llmctl status`
more than the probe itself.
"""

from __future__ import annotations

import socket


def _host_port(url: str) -> tuple[str, int]:
    """("host", port) of "http://host:port[/...]" or "http://[v6]:port" (no urllib: import cost)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail.lstrip(":")
    else:
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    return host or "127.0.0.1", int(port) if port.isdigit() else 80


def health_status(url: str, timeout: float = 0.5) -> int | None:
    """HTTP status of `url`/health, None when nothing answers in time."""
    host, port = _host_port(url)
    hosthdr = f"[{host}]" if ":" in host else host
    request = f"GET /health HTTP/1.1\r\nHost: {hosthdr}:{port}\r\nConnection: close\r\n\r\n"
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(request.encode())
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    status_line = data.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        return None
    try:
        return int(status_line[1])
    except ValueError:
        return None


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect; an IP literal skips getaddrinfo (and the idna codec import it brings)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((host, port), timeout=timeout)


def is_healthy(url: str, timeout: float = 0.5) -> bool:
    return health_status(url, timeout) == 200
