"""Content-addressed objects: `objects/ab/<62 hex>` named by the blake3 of their bytes.

Every write goes to a temp file in the object's shard directory, is fsynced, made read-only
and renamed into place, so an object is either whole or absent whatever kills the writer;
what a killed writer leaves is a temp file that `gc` removes. Pure file storage: no locks,
no index (the `Store` adds those).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from warmer.errors import StoreError

ALGORITHM = "blake3"
TEMP_PREFIX = ".tmp-"
#: Files up to this size are read whole (thousands of small cache files); larger ones stream.
WHOLE_FILE_LIMIT = 4 << 20
_CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"^blake3:[0-9a-f]{64}$")
_OBJECT_NAME_RE = re.compile(r"^[0-9a-f]{62}$")
_SHARD_RE = re.compile(r"^[0-9a-f]{2}$")


def is_digest(value: object) -> bool:
    """True for `blake3:<64 lowercase hex>`."""
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def _hasher() -> Any:
    from blake3 import blake3  # imported here so that manifests and the CLI load fast

    return blake3()


def digest_bytes(data: bytes) -> str:
    """`blake3:<hex>` of `data`."""
    hasher = _hasher()
    hasher.update(data)
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def digest_file(path: Path) -> tuple[str, int]:
    """`(blake3:<hex>, size)` of the file at `path`, read in chunks."""
    hasher = _hasher()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return f"{ALGORITHM}:{hasher.hexdigest()}", size


class ObjectStore:
    """Immutable objects under `root`, sharded by the first two hex characters."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: shard directories known to exist: one mkdir per shard, not per object
        self._shards: set[Path] = set()

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise StoreError(f"not a blake3 digest: {digest!r}")
        hexdigest = digest[len(ALGORITHM) + 1 :]
        return self.root / hexdigest[:2] / hexdigest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes) -> str:
        digest = digest_bytes(data)
        if not self.has(digest):
            with self._temp_file(digest) as (temp, handle):
                handle.write(data)
                self._install(temp, handle, digest)
        return digest

    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a file's content; a file already stored costs one read and no write."""
        with open(src, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size <= WHOLE_FILE_LIMIT:
                data = source.read()
                return self.put_bytes(data), len(data)
            return self.put_stream(source)

    def put_stream(self, stream: BinaryIO, size: int | None = None) -> tuple[str, int]:
        """Store what `stream` yields, hashing while copying; `size` checks it was all there."""
        hasher = _hasher()
        written = 0
        with self._temp_file(None) as (temp, handle):
            while chunk := stream.read(_CHUNK if size is None else min(_CHUNK, size - written)):
                hasher.update(chunk)
                handle.write(chunk)
                written += len(chunk)
            if size is not None and written != size:
                raise StoreError(f"stream ended after {written} of {size} bytes")
            digest = f"{ALGORITHM}:{hasher.hexdigest()}"
            if not self.has(digest):
                self._install(temp, handle, digest)
        return digest, written

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise StoreError(f"object {digest} is missing from the store") from None

    def check(self, digest: str) -> bool:
        """Re-hash the object: True when it is present and its bytes match its name."""
        try:
            return digest_file(self.path(digest))[0] == digest
        except FileNotFoundError:
            return False

    def iter_entries(self) -> Iterator[tuple[Path, str | None]]:
        """Every file under the shards: `(path, digest)` for objects, `(path, None)` for temps.

        Files of any other name are not the store's and are not listed.
        """
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if not _SHARD_RE.match(shard.name) or not shard.is_dir():
                continue
            for entry in sorted(shard.iterdir()):
                if entry.name.startswith(TEMP_PREFIX):
                    yield entry, None
                elif _OBJECT_NAME_RE.match(entry.name):
                    yield entry, f"{ALGORITHM}:{shard.name}{entry.name}"

    @contextlib.contextmanager
    def _temp_file(self, digest: str | None) -> Iterator[tuple[Path, BinaryIO]]:
        """A temp file in the shard of `digest` (any shard when unknown), removed on failure."""
        shard = self.path(digest).parent if digest else self.root / secrets.token_hex(1)
        self._ensure_shard(shard)
        temp = shard / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            with open(temp, "xb") as handle:
                yield temp, handle
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def _ensure_shard(self, shard: Path) -> None:
        if shard not in self._shards:
            shard.mkdir(parents=True, exist_ok=True)
            self._shards.add(shard)

    def _install(self, temp: Path, handle: BinaryIO, digest: str) -> None:
        """Make the temp file durable and read-only, then give it its final name."""
        handle.flush()
        os.fsync(handle.fileno())
        os.fchmod(handle.fileno(), 0o444)
        target = self.path(digest)
        self._ensure_shard(target.parent)
        os.replace(temp, target)
