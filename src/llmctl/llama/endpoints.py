"""llama-server's HTTP API as its source registers it (tools/server/server.cpp), and its CORS rules.

The table is checked against the llama.cpp source of the tested build (the pinned one, and the
others of `make compat`), so a route added upstream shows up as a failing test rather than as a
404 behind the router.
"""

from __future__ import annotations

# Every (method, path) a single-model llama-server registers; `:id_slot` is a path parameter.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/health"),
    ("GET", "/v1/health"),
    ("GET", "/metrics"),
    ("GET", "/props"),
    ("POST", "/props"),
    ("GET", "/models"),
    ("GET", "/v1/models"),
    ("POST", "/completion"),
    ("POST", "/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/chat/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/chat/completions/control"),
    ("POST", "/v1/responses"),
    ("POST", "/responses"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/audio/transcriptions"),
    ("POST", "/v1/messages"),
    ("POST", "/infill"),
    ("POST", "/embedding"),
    ("POST", "/embeddings"),
    ("POST", "/v1/embeddings"),
    ("POST", "/rerank"),
    ("POST", "/reranking"),
    ("POST", "/v1/rerank"),
    ("POST", "/v1/reranking"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/apply-template"),
    ("POST", "/chat/completions/input_tokens"),
    ("POST", "/v1/chat/completions/input_tokens"),
    ("POST", "/responses/input_tokens"),
    ("POST", "/v1/responses/input_tokens"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/lora-adapters"),
    ("POST", "/lora-adapters"),
    ("GET", "/slots"),
    ("POST", "/slots/:id_slot"),
    ("GET", "/v1/stream"),
    ("POST", "/v1/streams/lookup"),
    ("DELETE", "/v1/stream"),
    ("GET", "/cors-proxy"),
    ("POST", "/cors-proxy"),
    ("GET", "/tools"),
    ("POST", "/tools"),
)

# Routes of builds newer than the pinned one, with the first build seen to have them. Behind the
# router every `/v1/` path is proxied, so these work with the builds that have them.
NEWER_ROUTES: tuple[tuple[str, str, int], ...] = (
    ("POST", "/v1/systemone", 11434),  # typed decision models (server-decision.cpp)
)

# Routes only llama.cpp's own multi-model router mode registers (llmctl has /models/switch etc.).
ROUTER_MODE_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/models"),
    ("POST", "/models/load"),
    ("POST", "/models/unload"),
    ("GET", "/models/sse"),
    ("DELETE", "/models"),
)

# Answered without an API key (server-http.cpp: get_public_endpoints; the web UI's assets too).
PUBLIC_PATHS = frozenset({"/health", "/v1/health"})

# Lets a client make the server fetch any URL (the web UI's MCP proxy).
CORS_PROXY = "/cors-proxy"

# The defaults of --cors-origins, --cors-methods, --cors-headers, --cors-credentials (common.h).
# With origins `*` and credentials on, llama-server echoes the request's Origin back.
CORS_ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "*"
CORS_ALLOW_CREDENTIALS = "true"


def cors_headers(origin: str, *, preflight: bool) -> list[tuple[bytes, bytes]]:
    """The CORS headers llama-server (default flags) puts on a response to a request from `origin`.

    A preflight (`OPTIONS`) is answered before any key check, with an empty `text/html` body.
    """
    # spelled as llama-server spells them: clients that read headers into a plain dict see them
    out = [(b"Access-Control-Allow-Origin", origin.encode("latin-1"))]
    if preflight:
        out += [
            (b"Access-Control-Allow-Credentials", CORS_ALLOW_CREDENTIALS.encode()),
            (b"Access-Control-Allow-Methods", CORS_ALLOW_METHODS.encode()),
            (b"Access-Control-Allow-Headers", CORS_ALLOW_HEADERS.encode()),
        ]
    return out


def api_key_of(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: `Authorization` (without `Bearer `), else `X-Api-Key`.

    As server-http.cpp reads it: the Anthropic SDK sends `x-api-key`, the OpenAI SDK a bearer token.
    """
    given = authorization or x_api_key
    if not given:
        return None
    given = given.strip()
    scheme, _, rest = given.partition(" ")
    if scheme.lower() == "bearer":
        given = rest.strip()
    return given or None
