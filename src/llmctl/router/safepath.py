"""Which request paths the router refuses before routing.

A path with a dot segment (`..`, `.`, also percent-encoded) or an encoded slash or backslash could
leave an upstream's path prefix once the upstream (or a proxy before it) normalises it, and the
request would carry that upstream's key. Such paths are refused, for every endpoint, rather than
normalised: no client of an OpenAI-compatible or llama-server API sends them. A segment is compared
with its `;params` cut off (`..;x`), since servlet containers and some proxies drop them first.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_MAX_DECODES = 4  # %252e%252e -> %2e%2e -> ..: decode until stable, a few times at most
# what any refused path contains: a backslash, a control character, an escape, or a segment
# that starts with a dot; every request's path is checked, most of them have none of these
_SUSPECT = re.compile(rb"[\\\x00-\x1f\x7f%]|(?:^|/)\.")


def unsafe_path(raw_path: bytes) -> str | None:
    """Why `raw_path` (the path as sent, without the query) is refused, or None when it is fine."""
    if _SUSPECT.search(raw_path) is None:
        return None
    return _why(raw_path)


def _why(raw_path: bytes) -> str | None:
    decoded = raw_path
    for _ in range(_MAX_DECODES):
        if b"\\" in decoded:
            return "a backslash in the path"
        if any(c < 0x20 or c == 0x7F for c in decoded):
            return "a control character in the path"
        segments = decoded.split(b"/")
        if any(s.split(b";", 1)[0] in (b".", b"..") for s in segments):
            return "a dot segment ('.' or '..') in the path"
        if b"%" not in decoded:
            return None
        nxt = unquote_to_bytes(decoded)
        if nxt.count(b"/") != decoded.count(b"/"):
            return "an encoded slash in the path"
        if nxt == decoded:
            return None
        decoded = nxt
    return "a path encoded more times than any client does"
