"""The store lock: `flock` on `<root>/lock`, shared for normal use and exclusive for gc/prune.

A process holds the shared lock from its first use of the store until it closes it, so that
objects it has written but not yet committed cannot be swept by a `gc` in another process.
The kernel drops the lock when the process dies, so a killed writer never blocks the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from warmer.errors import StoreError

_POLL_SECONDS = 0.05


class StoreLock:
    """One open file on the lock file; the flock state belongs to it."""

    def __init__(self, path: Path, *, exclusive_timeout: float) -> None:
        self.path = path
        self.exclusive_timeout = exclusive_timeout
        self._file: IO[bytes] | None = None
        self._shared = False

    def acquire_shared(self) -> None:
        """Take the shared lock (idempotent); waits while a gc or prune runs."""
        if not self._shared:
            fcntl.flock(self._open(), fcntl.LOCK_SH)
            self._shared = True

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store alone, then go back to the shared lock if it was held before.

        Raises StoreError when other processes keep using the store past the timeout.
        """
        fd = self._open()
        deadline = time.monotonic() + self.exclusive_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A failed conversion drops the shared lock (Linux); take it back while waiting.
                if self._shared:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the store {self.path.parent} is in use by another warmer process; "
                        "gc and prune need it alone: try again when that process has finished"
                    ) from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH if self._shared else fcntl.LOCK_UN)

    def busy(self) -> bool:
        """Whether another process holds the store alone now (a gc or prune), without waiting."""
        if not self.path.exists():
            return False
        with open(self.path, "rb") as probe:
            try:
                fcntl.flock(probe.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def close(self) -> None:
        """Release the lock (closing the file drops it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._shared = False

    def _open(self) -> int:
        # A file object, not a bare descriptor: a Store dropped without close() still
        # releases the lock when it is garbage-collected.
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 -- held until close()
        return self._file.fileno()
