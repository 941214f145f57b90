"""One lock for every change of state, across threads and processes: flock on a file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from llmctl.errors import LockTimeout

LOCK_FILE = "lock"


class StateLock:
    """`with StateLock(dir, timeout):` holds the lock; LockTimeout when it cannot within `timeout`.

    Each acquisition opens its own file description, so threads of one process exclude each
    other too. The kernel drops the lock when the holder dies, even by SIGKILL.
    """

    def __init__(self, state_dir: Path, timeout: float, *, purpose: str = "") -> None:
        self.path = state_dir / LOCK_FILE
        self.state_dir = state_dir
        self.timeout = timeout
        self.purpose = purpose
        self.waited_s = 0.0
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """One attempt, no waiting."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._describe_holder()
        return True

    def acquire(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        delay = 0.001
        while not self.try_acquire():
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeout(
                    f"another llmctl holds the state lock ({self.holder() or 'unknown'}) "
                    f"and did not release it within {self.timeout:g} s",
                    hint=f"wait for it to finish, or raise --lock-timeout; the lock is {self.path}",
                )
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, 0.05)
        self.waited_s = time.monotonic() - t0

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> str:
        """What the current holder wrote about itself (best effort)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            from llmctl.supervisor.state import state_dir_error

            raise state_dir_error(self.state_dir, err, "take the lock") from None

    def _describe_holder(self) -> None:
        assert self._fd is not None
        note = f"pid {os.getpid()}"
        if self.purpose:
            note += f": {self.purpose}"
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, note.encode() + b"\n", 0)
