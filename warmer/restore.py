"""Restore: install a bundle's caches where this machine's runtimes look for them.

All or nothing: every file is streamed into a temp file beside its destination and checked
against the manifest; only when the whole bundle has been read and verified are the temp
files renamed into place. A hostile or broken bundle therefore installs nothing, and nothing
is ever written outside the target root. Triton group files are re-pointed when files land
at another absolute path than the one recorded (`--root`, `--map`), so the caches still hit.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.bundle import VerifiedReader, open_bundle
from warmer.caches import is_triton_group, rewrite_group
from warmer.envkey import EnvKey, compare
from warmer.errors import BundleError, EnvMismatch, UsageError, WarmerError
from warmer.harvest import relocate
from warmer.store.cas import digest_file
from warmer.store.manifest import FileEntry, Manifest

if TYPE_CHECKING:
    from warmer.store import Store

#: Members up to this size are read whole and written by the pool; larger ones are streamed.
_IN_MEMORY = 16 << 20
#: At most this many bytes wait in memory for the pool.
_IN_FLIGHT_BYTES = 256 << 20
#: progress(files_done, bytes_done, files_total, bytes_total)
RestoreProgress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did (or, with dry_run, would do)."""

    bundle: str
    root: str
    name: str
    env_tag: str
    files: int
    bytes: int
    written: int
    bytes_written: int
    skipped_identical: int
    rewritten: int
    dry_run: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def destination_of(path: str, root: str, mapping: Mapping[str, str]) -> str:
    """Where a file recorded at `path` lands: `root` + the relocated path, never outside root."""
    moved = relocate(path, mapping)
    if not moved.startswith("/") or posixpath.normpath(moved) != moved or "/../" in moved + "/":
        raise UsageError(f"--map turns {path} into {moved!r}, which is not a clean absolute path")
    base = os.path.abspath(root)
    destination = os.path.normpath(os.path.join(base, moved.lstrip("/")))
    # both normalised and absolute: a prefix test is commonpath's answer at a fraction of its
    # cost (it runs once per file)
    if not destination.startswith(base.rstrip("/") + "/"):
        raise BundleError(f"{path} would land outside {base}: refused")
    return destination


def check_environment(manifest: Manifest, *, force: bool) -> list[str]:
    """Compare the bundle's env key with this machine's; refuse mismatches unless forced."""
    differences = compare(EnvKey.from_dict(manifest.env), EnvKey.probe())
    mismatches = [str(d) for d in differences if d.severity == "mismatch"]
    if mismatches and not force:
        raise EnvMismatch(mismatches)
    return [str(d) for d in differences]


def restore(
    source: str | Path,
    *,
    store: Store | None = None,
    root: str | Path = "/",
    force: bool = False,
    dry_run: bool = False,
    mapping: Mapping[str, str] | None = None,
    check_env: bool = True,
    progress: RestoreProgress | None = None,
) -> RestoreReport:
    """Install the bundle at `source` under `root` (see the module docstring); with `store`,
    the snapshot `source` of that store (pulled from a registry, say), re-hashing every
    object on the way so that a damaged store installs nothing.

    Raises EnvMismatch (exit 4) when the bundle was made for another environment and `force`
    is false, BundleError (exit 2) for a corrupt or hostile bundle.
    """
    with _opened(source, store) as (label, manifest, files):
        return _install(
            label,
            manifest,
            files,
            root=root,
            force=force,
            dry_run=dry_run,
            mapping=mapping,
            check_env=check_env,
            progress=progress,
        )


@contextlib.contextmanager
def _opened(
    source: str | Path, store: Store | None
) -> Iterator[tuple[str, Manifest, Iterator[tuple[FileEntry, VerifiedReader]]]]:
    """(label, manifest, verified file stream) of a bundle file or a store snapshot."""
    if store is None:
        with open_bundle(Path(source)) as bundle:
            yield str(source), bundle.manifest, bundle.files()
        return
    _info, manifest = store.resolve(str(source))
    label = f"{store.root}:{manifest.ref}"

    def files() -> Iterator[tuple[FileEntry, VerifiedReader]]:
        for entry in manifest.files:
            with store.open_object(entry.digest) as obj:
                reader = VerifiedReader(obj, entry, Path(label))
                yield entry, reader
                reader.finish()

    yield label, manifest, files()


def _install(
    source: str,
    manifest: Manifest,
    files: Iterator[tuple[FileEntry, VerifiedReader]],
    *,
    root: str | Path,
    force: bool,
    dry_run: bool,
    mapping: Mapping[str, str] | None,
    check_env: bool,
    progress: RestoreProgress | None,
) -> RestoreReport:
    mapping = dict(mapping or {})
    root_dir = os.path.abspath(root)
    if os.path.exists(root_dir) and not os.path.isdir(root_dir):
        raise UsageError(f"--root {root_dir}: not a directory")
    installer = _Installer()
    written = bytes_written = skipped = rewritten = 0
    try:
        warnings = check_environment(manifest, force=force) if check_env else []
        total_files, total_bytes, done_bytes = len(manifest.files), manifest.total_size, 0
        for index, (entry, reader) in enumerate(files, start=1):
            destination = destination_of(entry.path, root_dir, mapping)
            if entry.size <= _IN_MEMORY:
                data = reader.read_all()
                if is_triton_group(entry.path):
                    moved = rewrite_group(data, os.path.dirname(destination))
                    rewritten += moved is not None
                    data = moved or data
                if dry_run:
                    identical = _same_bytes(destination, data)
                    skipped += identical
                    written += not identical
                    bytes_written += 0 if identical else len(data)
                else:
                    installer.write(destination, data, entry.mode)
            elif _same_file(destination, entry.size, entry.digest):
                reader.finish()
                skipped += 1
            elif dry_run:
                reader.finish()
                written += 1
                bytes_written += entry.size
            else:
                installer.stream(destination, reader, entry.mode)
            done_bytes += entry.size
            if progress:
                progress(index, done_bytes, total_files, total_bytes)
        if not dry_run:
            written, bytes_written, skipped = installer.commit()
    except PermissionError as exc:
        raise WarmerError(f"cannot write under {root_dir}: {exc}") from None
    finally:
        installer.close()
    return RestoreReport(
        bundle=source,
        root=root_dir,
        name=manifest.name,
        env_tag=manifest.env_tag,
        files=len(manifest.files),
        bytes=manifest.total_size,
        written=written,
        bytes_written=bytes_written,
        skipped_identical=skipped,
        rewritten=rewritten,
        dry_run=dry_run,
        warnings=warnings,
    )


def _same_file(path: str, size: int, digest: str) -> bool:
    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) != size:
            return False
        return digest_file(Path(path))[0] == digest
    except OSError:
        return False


def _same_bytes(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as existing:
            return existing.read(len(data) + 1) == data
    except OSError:
        return False


class _Installer:
    """Writes verified files to temp names beside their destinations, on a thread pool (file
    creation, not decompression, is what costs on most disks); `commit` renames them all into
    place, `close` without a commit removes every temp file and directory it made."""

    _WORKERS = 8

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(self._WORKERS)
        self._pending: list[Future[tuple[int, int]]] = []
        self._budget = threading.BoundedSemaphore(_IN_FLIGHT_BYTES // _IN_MEMORY)
        self._lock = threading.Lock()
        self._staged: list[tuple[str, str]] = []
        self._created_dirs: list[str] = []
        self._known_dirs: set[str] = set()
        self._umask = _current_umask()
        self._committed = False

    def write(self, destination: str, data: bytes, mode: int) -> None:
        """Stage `data` (already verified) in the background, unless identical there."""
        self._budget.acquire()
        future = self._pool.submit(self._write, destination, data, mode)
        future.add_done_callback(lambda _f: self._budget.release())
        self._pending.append(future)

    def stream(self, destination: str, reader: VerifiedReader, mode: int) -> None:
        """Stage a large member from the bundle stream, here (the stream is sequential)."""
        fd = self._create(destination, mode)
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
            reader.finish()
        self._pending.append(_done((1, reader.entry.size)))

    def _write(self, destination: str, data: bytes, mode: int) -> tuple[int, int]:
        if _same_bytes(destination, data):
            return 0, 0
        fd = self._create(destination, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return 1, len(data)

    def _create(self, destination: str, mode: int) -> int:
        """A new temp file beside `destination`, registered before a byte is written."""
        directory = os.path.dirname(destination)
        self._makedirs(directory)
        if os.path.isdir(destination) and not os.path.islink(destination):
            raise BundleError(f"{destination} is a directory here: refused to replace it")
        temp = os.path.join(directory, f".warmer-{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with self._lock:
            self._staged.append((temp, destination))
        if mode & ~self._umask != mode:
            os.fchmod(fd, mode)
        return fd

    def _makedirs(self, directory: str) -> None:
        with self._lock:
            if directory in self._known_dirs:
                return
            missing: list[str] = []
            current = directory
            while not os.path.isdir(current):
                missing.append(current)
                current = os.path.dirname(current)
            for path in reversed(missing):
                os.mkdir(path, 0o755)
                self._created_dirs.append(path)
            self._known_dirs.add(directory)

    def commit(self) -> tuple[int, int, int]:
        """Wait for every write (the first error is raised), then rename all into place.

        Returns (written, bytes written, skipped as identical).
        """
        results = [future.result() for future in self._pending]
        list(self._pool.map(lambda item: os.replace(*item), self._staged))
        self._committed = True
        written = sum(count for count, _ in results)
        return written, sum(size for _, size in results), len(results) - written

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._committed:
            return
        for temp, _destination in self._staged:
            Path(temp).unlink(missing_ok=True)
        for directory in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


def _done(result: tuple[int, int]) -> Future[tuple[int, int]]:
    future: Future[tuple[int, int]] = Future()
    future.set_result(result)
    return future


def _current_umask() -> int:
    """The process umask (read once, on the calling thread: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
