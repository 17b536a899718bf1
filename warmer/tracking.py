"""A Triton cache manager that records kernel cache hits without slowing them down.

Enable it in the serving process:

    TRITON_CACHE_MANAGER=warmer.tracking:TrackingCacheManager

A hit (Triton 3.x `compile()` finds the kernel's group file and every file it lists) costs
one `write()` of a 67-byte line to this process's own append-only log in
`<state>/hits/` — no lock, no sqlite, no fsync on the hot path. Lines are written whole by
one `write()` on an O_APPEND descriptor, so they are never torn even when a forked child
shares the descriptor. The log is not buffered in memory: a buffer would lose the hits of a
killed server, and one small write is about the price of one of the `stat` calls that
FileCacheManager makes on every lookup anyway (bench/kernels.py measures it).

`warmer kernels ls` folds the logs into its sqlite index (`warmer.kernels.KernelIndex`). The
log file is created under a temporary name, locked shared with flock for the life of the
process, then renamed: a folder that can lock a log exclusively knows its writer is gone and
deletes it once folded to the end.

Importing this module imports Triton (the class must subclass FileCacheManager); importing
`warmer` does not import this module.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
import warnings

from triton.runtime.cache import FileCacheManager

from warmer.kernels import HIT_LOG_SUFFIX, hit_line, hit_log_dir, state_dir

__all__ = ["TrackingCacheManager"]


class _HitLog:
    """This process's hit log, opened on the first hit; never raises into Triton."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._disabled = False

    def record(self, key: str) -> None:
        fd = self._fd if self._fd is not None else self._open()
        if fd is None:
            return
        try:
            os.write(fd, hit_line(key, time.time_ns()))
        except OSError as exc:
            self._disable(exc)

    def _open(self) -> int | None:
        if self._disabled:
            return None
        try:
            directory = hit_log_dir(state_dir())
            directory.mkdir(parents=True, exist_ok=True)
            base = directory / f"{os.getpid()}-{secrets.token_hex(6)}"
            temp = f"{base}.new"
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o644)
            # Held until the process ends: folders leave a live log in place.
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(temp, f"{base}{HIT_LOG_SUFFIX}")
        except OSError as exc:
            self._disable(exc)
            return None
        self._fd = fd
        return fd

    def _disable(self, exc: OSError) -> None:
        warnings.warn(f"warmer.tracking: not recording kernel hits: {exc}", stacklevel=3)
        self._disabled = True
        self.forget()

    def forget(self) -> None:
        """Drop the descriptor (in a forked child: the parent keeps its log and its lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_LOG = _HitLog()
os.register_at_fork(after_in_child=_LOG.forget)


class TrackingCacheManager(FileCacheManager):
    """Triton's FileCacheManager that logs each kernel cache hit (see the module docstring)."""

    def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
        super().__init__(key, override=override, dump=dump)
        # Override and dump managers are not the cache: lookups there are not hits.
        self._tracked = not (override or dump)

    def get_group(self, filename: str) -> dict[str, str] | None:
        """Triton's lookup; a group that names `filename` is what compile() counts as a hit."""
        group: dict[str, str] | None = super().get_group(filename)
        if group is not None and self._tracked and filename in group:
            _LOG.record(self.key)
        return group
