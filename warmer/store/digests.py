"""Digests as `algorithm:hex`, and the one stream that checks one while it is read.

blake3 names store objects and the files of a manifest; sha256 names OCI blobs. Whatever
reads bytes it must trust — a bundle member, a store object being restored, a registry
blob — reads them through `VerifiedStream`, which hashes in the caller's chunks (one hash
update per read, no copy) and raises the caller's error class when size or digest differ.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Protocol

from warmer.errors import WarmerError

_CHUNK = 1 << 20


def hasher(algorithm: str) -> Any:
    """A new hash object of `algorithm` (blake3 or sha256)."""
    if algorithm == "blake3":
        from blake3 import blake3  # imported here so that manifests and the CLI load fast

        return blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def mismatch(what: str, actual: str, expected: str, against: str) -> str:
    """The message for bytes whose digest is not the expected one: what was read, and both
    digests (`algorithm:hex`, shown as the algorithm and 12 hex)."""
    algorithm, _, got = actual.partition(":")
    return (
        f"{what}: content does not match {against} "
        f"({algorithm} {got[:12]}…, expected {expected.partition(':')[2][:12]}…)"
    )


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class VerifiedStream(io.RawIOBase):
    """Reads `stream` while hashing it with the algorithm of `digest` (`algorithm:hex`).

    More than `size` bytes is refused at once; at the end of the stream (a read that
    returns nothing, or `finish()`, which drains what is left) a short stream or a digest
    that differs raises `error` naming `what` and both digests. A read that fails raises
    `error` too. `against` names what the digest came from ("the manifest", "its digest");
    `hint`, when given, ends the messages of a short or different stream.
    """

    def __init__(
        self,
        stream: Readable,
        digest: str,
        size: int,
        what: str,
        error: type[WarmerError],
        *,
        against: str = "its digest",
        hint: str = "",
    ) -> None:
        self._stream, self.digest, self.size, self.what = stream, digest, size, what
        self._error, self._against = error, against
        self._hint = f": {hint}" if hint else ""
        self._algorithm = digest.partition(":")[0]
        self._hasher = hasher(self._algorithm)
        self._seen = 0
        self._finished = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.read_all()
        data = self._take(size)
        if not data and size:
            self._check()
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_all(self) -> bytes:
        """All that is left, verified: one read and one hash update where the stream gives
        the rest at once (a bundle member, a file), not 8 KiB at a time."""
        chunks = []
        while self._seen < self.size and (data := self._take(self.size - self._seen)):
            chunks.append(data)
        self.finish()
        return b"".join(chunks)  # one chunk: the same bytes object, no copy

    def finish(self) -> None:
        """Drain what is left and raise `error` when the bytes are not the expected ones."""
        if self._finished:
            return
        while self._take(_CHUNK):
            pass
        self._check()

    def _take(self, size: int) -> bytes:
        try:
            data = self._stream.read(size)
        except WarmerError:
            raise
        except Exception as exc:  # gzip's EOFError, zstandard's errors, OSError, the network
            raise self._error(f"{self.what}: cannot be read whole ({exc})") from None
        self._hasher.update(data)
        self._seen += len(data)
        if self._seen > self.size:
            raise self._error(f"{self.what}: more than the {self.size} bytes expected")
        return data

    def _check(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._seen != self.size:
            raise self._error(
                f"{self.what}: truncated ({self._seen} of {self.size} bytes){self._hint}"
            )
        actual = f"{self._algorithm}:{self._hasher.hexdigest()}"
        if actual != self.digest:
            raise self._error(mismatch(self.what, actual, self.digest, self._against) + self._hint)
