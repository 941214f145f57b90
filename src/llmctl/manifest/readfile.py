"""Reading a manifest's bytes: a regular file of a sane size only.

A special file (`/dev/zero`, a FIFO, a socket) or a file over MAX_MANIFEST_BYTES gets a
ManifestError naming it, instead of an unbounded read or an open that blocks forever.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llmctl.errors import ManifestError

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # hundreds of profiles take a few hundred KiB


def read_manifest_bytes(path: Path | str, shown: Path | str | None = None) -> bytes:
    """The file's bytes; OSError as os.open raises it, ManifestError (naming `shown`, else
    `path`) for what is no manifest."""
    name = path if shown is None else shown
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(
                f"{name}: not a regular file (a device, FIFO or socket); a manifest is a YAML file",
                hint="pass --manifest PATH of a profiles.yaml file",
            )
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{name}: {st.st_size} bytes, more than a manifest may have "
                f"({MAX_MANIFEST_BYTES // (1024 * 1024)} MiB)",
                hint="check that --manifest names the profiles.yaml file",
            )
        chunks = []
        left = MAX_MANIFEST_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_MANIFEST_BYTES:  # it grew while being read
            raise ManifestError(
                f"{name}: more than {MAX_MANIFEST_BYTES} bytes, more than a manifest may have"
            )
        return data
    finally:
        os.close(fd)
