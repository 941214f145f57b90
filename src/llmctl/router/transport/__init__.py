"""How the router sends one request upstream: `base.Transport`, `loopback.Pool` for plain http to
this machine, `remote.RemoteTransport` (httpx) elsewhere."""
