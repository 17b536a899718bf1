"""Content-addressed objects: `objects/ab/<62 hex>` named by the blake3 of their bytes.

Durability is batched. A put writes a read-only temp file in the object's shard directory
and stages it; `publish()` makes everything staged durable at once — one `syncfs` of the
store's filesystem (or, where there is none, an fsync of each file from a thread pool) —
then renames each temp to its object name and syncs again for the directories. A file under
an object name therefore always holds its whole, durable bytes (a later put that finds it
skips the write and trusts it), and what a crash leaves is temp files that `gc` removes.
Pure file storage: no locks, no index (the `Store` adds those).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from warmer.errors import StoreError
from warmer.store.digests import hasher

ALGORITHM = "blake3"
TEMP_PREFIX = ".tmp-"
#: Files up to this size are read whole (thousands of small cache files); larger ones stream.
WHOLE_FILE_LIMIT = 4 << 20
_CHUNK = 1 << 20
#: fsyncs in flight while publishing without syncfs: the device queues and merges them.
_SYNC_THREADS = 32
_DIGEST_RE = re.compile(r"^blake3:[0-9a-f]{64}$")
_NAME_LENGTH = 62
_OBJECT_NAME_RE = re.compile(r"^[0-9a-f]{62}$")
_SHARD_RE = re.compile(r"^[0-9a-f]{2}$")


def is_digest(value: object) -> bool:
    """True for `blake3:<64 lowercase hex>`."""
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def digest_bytes(data: bytes) -> str:
    """`blake3:<hex>` of `data`."""
    hashing = hasher(ALGORITHM)
    hashing.update(data)
    return f"{ALGORITHM}:{hashing.hexdigest()}"


def digest_file(path: Path) -> tuple[str, int]:
    """`(blake3:<hex>, size)` of the file at `path`, read in chunks."""
    hashing = hasher(ALGORITHM)
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            hashing.update(chunk)
            size += len(chunk)
    return f"{ALGORITHM}:{hashing.hexdigest()}", size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(path: str) -> None:
    """fsync a file or a directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's `syncfs(fd)`: one call writes back a whole batch, data and inodes together
    (on an 8,800-file ingest it cost half of what an fsync per file from a pool did)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int,)
    call.restype = ctypes.c_int
    return call


_syncfs = _load_syncfs()


class ObjectStore:
    """Immutable objects under `root`, sharded by the first two hex characters.

    Thread-safe: harvests put from worker threads, and runners on threads share one store.
    Paths are plain strings inside: tens of thousands of small objects pay for every step.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        #: shard directories known to exist: one mkdir per shard, not per object
        self._shards: set[str] = set()
        #: digest -> temp file written and staged, not yet durable under its object name
        self._staged: dict[str, str] = {}
        self._staging = threading.Lock()
        self._publishing = threading.Lock()

    def path(self, digest: str) -> Path:
        return Path(self._object(digest))

    def has(self, digest: str) -> bool:
        """Stored or staged: either way a put of the same bytes writes nothing."""
        return digest in self._staged or os.path.isfile(self._object(digest))

    def put_bytes(self, data: bytes, *, repair: bool = False) -> str:
        """Store `data`; with `repair`, a damaged object of the same name is replaced."""
        digest = digest_bytes(data)
        target = self._name(digest)
        stored = os.path.isfile(target) and not (repair and not self.check(digest))
        if digest not in self._staged and not stored:

            def fill(fd: int) -> str:
                _write_all(fd, data)
                return digest

            self._write(target[: -_NAME_LENGTH - 1], fill, unseen=True)
        return digest

    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a file's content; a file already stored costs one read and no write."""
        with open(src, "rb", buffering=0) as source:  # one read: no buffer to copy through
            size = os.fstat(source.fileno()).st_size
            if size <= WHOLE_FILE_LIMIT:
                data = source.readall()
                return self.put_bytes(data), len(data)
            return self.put_stream(source)

    def put_stream(
        self, stream: BinaryIO, size: int | None = None, *, repair: bool = False
    ) -> tuple[str, int]:
        """Store what `stream` yields, hashing while copying; `size` checks it was all there.

        With `repair` (bytes that were verified on the way in: an import), an object
        already stored under the same name is re-hashed, and replaced when it is damaged.
        """
        written = 0

        def copy(fd: int) -> str:
            nonlocal written
            hashing = hasher(ALGORITHM)
            while chunk := stream.read(_CHUNK if size is None else min(_CHUNK, size - written)):
                hashing.update(chunk)
                _write_all(fd, chunk)
                written += len(chunk)
            if size is not None and written != size:
                raise StoreError(f"stream ended after {written} of {size} bytes")
            return f"{ALGORITHM}:{hashing.hexdigest()}"

        # The digest is known only at the end: the temp goes to any shard, publish moves it.
        shard = os.path.join(self._root, secrets.token_hex(1))
        digest = self._write(shard, copy, unseen=False, repair=repair)
        return digest, written

    def publish(self) -> None:
        """Make every staged object durable under its name; returns once it is.

        Order: the temp files' bytes, then the renames, then the directories, so no object
        name appears before its bytes are on disk and none is lost once this returns.
        Concurrent callers serialise: one that finds an object staged by another thread
        returns only when that object is published too.
        """
        with self._publishing:
            with self._staging:
                staged = dict(self._staged)
            if not staged:
                return
            shards = {self._name(digest)[: -_NAME_LENGTH - 1] for digest in staged}
            self._sync(staged.values())
            for digest, temp in staged.items():
                target = self._name(digest)
                self._ensure_shard(target[: -_NAME_LENGTH - 1])
                try:
                    os.replace(temp, target)
                except FileNotFoundError:
                    if not os.path.isfile(target):
                        raise
                    # renamed by an earlier publish that failed after its renames
            self._sync([*shards, self._root])
            with self._staging:
                for digest in staged:
                    del self._staged[digest]

    def discard(self, digests: Iterable[str] | None = None) -> None:
        """Remove what is staged and not published, all of it or these objects (the owner
        gave up on it)."""
        with self._publishing, self._staging:
            for digest in list(self._staged) if digests is None else digests:
                temp = self._staged.pop(digest, None)
                if temp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp)

    def open(self, digest: str) -> BinaryIO:
        """Read an object, staged or published (a staged one may be published meanwhile)."""
        staged = self._staged.get(digest)
        for candidate in (staged, self._object(digest)):
            if candidate is not None:
                with contextlib.suppress(FileNotFoundError):
                    return open(candidate, "rb")
        raise StoreError(f"object {digest} is missing from the store")

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

    def _object(self, digest: str) -> str:
        if not is_digest(digest):
            raise StoreError(f"not a blake3 digest: {digest!r}")
        return self._name(digest)

    def _name(self, digest: str) -> str:
        """The object's path, for a digest known to be well formed."""
        hexdigest = digest[len(ALGORITHM) + 1 :]
        return f"{self._root}/{hexdigest[:2]}/{hexdigest[2:]}"

    def _write(
        self, shard: str, fill: Callable[[int], str], *, unseen: bool, repair: bool = False
    ) -> str:
        """A read-only temp file in `shard`, filled through its descriptor by `fill` (which
        returns the digest), staged.

        The temp is removed when `fill` fails or the same bytes are staged already, or stored
        already (looked up unless the caller has just seen they are not: `unseen`) and, with
        `repair`, intact (a damaged object is replaced by the temp when it is published).
        """
        self._ensure_shard(shard)
        temp = f"{shard}/{TEMP_PREFIX}{secrets.token_hex(8)}"
        staged = False
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                digest = fill(fd)
                os.fchmod(fd, 0o444)  # whatever the umask
            finally:
                os.close(fd)
            stored = not unseen and os.path.isfile(self._name(digest))
            damaged = stored and repair and not self.check(digest)
            with self._staging:
                if digest not in self._staged and (not stored or damaged):
                    self._staged[digest] = temp
                    staged = True
            return digest
        finally:
            if not staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    def _sync(self, paths: Iterable[str]) -> None:
        """Make `paths` durable: syncfs of the store's filesystem, else an fsync of each."""
        if _syncfs is None:
            paths = list(paths)
            with ThreadPoolExecutor(min(_SYNC_THREADS, len(paths))) as pool:
                list(pool.map(_fsync, paths))
            return
        fd = os.open(self._root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise StoreError(f"cannot sync the store at {self._root}: {os.strerror(error)}")
        finally:
            os.close(fd)

    def _ensure_shard(self, shard: str) -> None:
        if shard not in self._shards:
            os.makedirs(shard, exist_ok=True)
            self._shards.add(shard)
