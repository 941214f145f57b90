"""The CLI in a pseudo-terminal, as a person sees it: `run_in_pty` runs a command with a pty as its
stdin, stdout and stderr (a terminal of a known size), and `Screen` replays what it wrote with the
few control sequences a live view uses (carriage return, cursor up and down, erase line), so that
a test asserts on the final screen rather than on the bytes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass

COLUMNS = 120
ROWS = 40

_CSI = re.compile(rb"\x1b\[([?0-9;]*)([A-Za-z])")
_OSC = re.compile(rb"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


class Screen:
    """A terminal's text: rows of characters, a cursor; no scrolling region, no colours."""

    def __init__(self, columns: int = COLUMNS) -> None:
        self.columns = columns
        self.rows: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.unknown: list[bytes] = []  # control sequences this model does not know

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        return self.rows[self.row]

    def _put(self, ch: str) -> None:
        if self.col >= self.columns:  # the terminal wraps
            self.row += 1
            self.col = 0
        line = self._line()
        while len(line) < self.col:
            line.append(" ")
        if self.col < len(line):
            line[self.col] = ch
        else:
            line.append(ch)
        self.col += 1

    def feed(self, data: bytes) -> None:
        data = _OSC.sub(b"", data)
        pos = 0
        text_parts: list[tuple[bytes, bytes | None]] = []
        for m in _CSI.finditer(data):
            text_parts.append((data[pos : m.start()], m.group(0)))
            pos = m.end()
        text_parts.append((data[pos:], None))
        for text, seq in text_parts:
            for ch in text.decode("utf-8", errors="replace"):
                if ch == "\r":
                    self.col = 0
                elif ch == "\n":
                    self.row += 1
                    self._line()
                elif ch == "\b":
                    self.col = max(0, self.col - 1)
                elif ch == "\x1b" or (ord(ch) < 32 and ch != "\t"):
                    self.unknown.append(ch.encode())
                else:
                    self._put(ch)
            if seq is not None:
                self._control(seq)

    def _control(self, seq: bytes) -> None:
        m = _CSI.fullmatch(seq)
        assert m is not None
        params, final = m.group(1).decode(), m.group(2).decode()
        n = int(params) if params.isdigit() else 1
        if final == "m" or params.startswith("?"):
            return  # colours; cursor shown/hidden
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "G":
            self.col = n - 1
        elif final == "K":
            line = self._line()
            if params in ("", "0"):
                del line[self.col :]
            elif params == "2":
                line.clear()
            else:
                del line[: self.col]
        else:
            self.unknown.append(seq)

    def lines(self) -> list[str]:
        """The screen's lines, trailing blanks dropped (and trailing empty lines)."""
        out = ["".join(r).rstrip() for r in self.rows]
        while out and not out[-1]:
            out.pop()
        return out


@dataclass
class PtyResult:
    returncode: int
    raw: bytes
    screen: Screen

    @property
    def lines(self) -> list[str]:
        return self.screen.lines()


def run_in_pty(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180.0
) -> PtyResult:
    """`python -m llmctl ARGS` with a pseudo-terminal of COLUMNS x ROWS as its terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    full_env = {**(env if env is not None else os.environ), "TERM": "xterm-256color"}
    full_env.pop("NO_COLOR", None)
    full_env.update(COLUMNS=str(COLUMNS), LINES=str(ROWS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmctl", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=full_env,
        start_new_session=True,
        close_fds=True,
    )
    os.close(slave)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(f"{args} did not end within {timeout} s: {bytes(raw)!r}")
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            raw += chunk
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.close(master)
    screen = Screen()
    screen.feed(bytes(raw))
    return PtyResult(code, bytes(raw), screen)
