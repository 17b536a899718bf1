"""Restore: install a bundle's caches where this machine's runtimes look for them.

All or nothing: every file is staged out of sight (inside a hidden twin of each directory the
target lacks, or under a temp name beside its destination) and checked against the manifest;
only when the whole bundle has been read and verified is anything renamed into place. A
hostile or broken bundle therefore installs nothing, and nothing is ever written outside the
target root. Triton group files are re-pointed when files land at another absolute path than
the one recorded (`--root`, `--map`), so the caches still hit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import queue
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.bundle import VerifiedReader, open_bundle
from warmer.caches import is_triton_group, relocate, rewrite_group
from warmer.envkey import EnvKey, compare
from warmer.errors import BundleError, EnvMismatch, TrustError, UsageError, WarmerError
from warmer.progress import Progress
from warmer.sources import in_store, is_bundle
from warmer.store.cas import digest_file
from warmer.store.manifest import FileEntry, Manifest

if TYPE_CHECKING:
    from warmer.provenance import Trust
    from warmer.store import Store

#: Members up to this size are read whole and handed to the writer threads; larger ones
#: are streamed.
_IN_MEMORY = 16 << 20
#: At most this many bytes wait in memory for the writer threads.
_IN_FLIGHT_BYTES = 256 << 20


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
    progress: Progress | None = None,
    trust: Trust | None = None,
) -> RestoreReport:
    """Install what `source` names under `root` (see the module docstring): a bundle file,
    or a snapshot of `store` (default: the configured store) that a store ref or a registry
    reference names, pulled from the registry or the cold tier when the store lacks it
    (`warmer.sources`). A snapshot's objects are re-hashed on the way, so that a damaged
    store installs nothing.

    With `trust`, a signature by a trusted key over this snapshot's statement is checked
    first (`warmer.provenance.Trust`): the envelope beside a bundle file, or the one the store
    keeps for a snapshot; the files are then checked against the signed manifest as they are
    staged, so a bundle altered after signing installs nothing either.

    Raises EnvMismatch (exit 4) when the bundle was made for another environment and `force`
    is false, BundleError (exit 2) for a corrupt or hostile bundle, TrustError (exit 2) when
    `trust` is not met.
    """
    with _opened(source, store, trust) as (label, manifest, files):
        try:
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
        except BundleError as exc:
            if trust is None:
                raise
            raise TrustError(f"{label}: altered after signing: {exc}") from None


@contextlib.contextmanager
def _opened(
    source: str | Path, store: Store | None, trust: Trust | None
) -> Iterator[tuple[str, Manifest, Iterator[tuple[FileEntry, VerifiedReader]]]]:
    """(label, manifest, verified file stream) of a bundle file or a store snapshot, its
    signature checked first under `trust`."""
    if store is None and is_bundle(source):
        with open_bundle(Path(source)) as bundle:
            if trust is not None:
                trust.bundle(Path(source), bundle.manifest)
            yield str(source), bundle.manifest, bundle.files()
        return
    if store is None:
        from warmer.store import Store

        with Store() as opened, _opened(source, opened, trust) as found:
            yield found
        return
    _info, manifest = in_store(store, str(source), restoring=True, trust=trust)
    if trust is not None:
        trust.stored(store, manifest)
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
    progress: Progress | None,
) -> RestoreReport:
    mapping = dict(mapping or {})
    root_dir = os.path.abspath(root)
    existing = root_dir
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--root {root_dir}: {existing} is not a directory")
    installer: _Installer | None = None
    written = bytes_written = skipped = rewritten = 0
    try:
        warnings = check_environment(manifest, force=force) if check_env else []
        if not dry_run:
            installer = _Installer(root_dir)
        total_files, total_bytes, done_bytes = len(manifest.files), manifest.total_size, 0
        for index, (entry, reader) in enumerate(files, start=1):
            destination = destination_of(entry.path, root_dir, mapping)
            if entry.size <= _IN_MEMORY:
                data = reader.read_all()
                if is_triton_group(entry.path):
                    moved = rewrite_group(data, os.path.dirname(destination))
                    rewritten += moved is not None
                    data = moved or data
                if installer is not None:
                    installer.write(destination, data, entry.mode)
                elif _same_bytes(destination, data):
                    skipped += 1
                else:
                    written += 1
                    bytes_written += len(data)
            elif _same_file(destination, entry.size, entry.digest):
                reader.finish()
                skipped += 1
            elif installer is not None:
                installer.stream(destination, reader, entry.mode)
            else:
                reader.finish()
                written += 1
                bytes_written += entry.size
            done_bytes += entry.size
            if progress:
                counts = {"files": index, "bytes": done_bytes}
                progress(
                    "files", {**counts, "files_total": total_files, "bytes_total": total_bytes}
                )
        if installer is not None:
            written, bytes_written, identical = installer.commit()
            skipped += identical
    except OSError as exc:  # no space left, no permission: the machine's, not the bundle's
        raise WarmerError(f"cannot write under {root_dir}: {exc}") from None
    finally:
        if installer is not None:
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
    """Whether the file at `path` holds `data`; a link there is never read through (it is
    replaced, as a file would be), a real directory there is refused."""
    try:  # non-blocking: a fifo there must not hang the restore
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # none there, or a link
        return False
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            _refuse_directory(path)
        if not stat.S_ISREG(mode):
            return False
        with open(fd, "rb", closefd=False) as existing:
            return existing.read(len(data) + 1) == data
    finally:
        os.close(fd)


def _refuse_directory(path: str) -> None:
    """Refuse to replace a real directory with a file (a link to one is replaced)."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise BundleError(f"{path} is a directory here: refused to replace it")


class _Installer:
    """Stages verified files out of sight; `commit` renames them into place, `close` without
    a commit removes everything it made.

    A directory missing from the target is staged whole: its topmost missing ancestor gets a
    hidden twin beside it, files go there under their final names, and one rename per twin
    publishes it (a fresh restore renames a few directories, not every file). A file whose
    directory exists goes to a temp name beside its destination and is renamed on its own.
    Writer threads each own the directories routed to them: creating files in one directory
    serialises on that directory in the kernel, in different ones it runs in parallel, and
    creating files, not decompressing or hashing, is most of a restore's time.
    """

    #: Creating a file is mostly kernel CPU time here, so one writer per core (at least two,
    #: so that reading and writing overlap; at most eight, past which nothing was gained).
    _WORKERS = min(
        8, max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    )

    def __init__(self, root: str) -> None:
        self._staged_by = _staging_owner()
        self._token = f"{self._staged_by or 'x'}-{secrets.token_hex(3)}"
        self._made_root = _make_directories(root)
        _sweep_dead_staging(root, self._staged_by)
        #: with --root, where writes must stay (links resolved); None for / (no limit)
        self._real_root = os.path.realpath(root) if root != "/" else None
        self._placed: dict[str, tuple[str, bool]] = {root: (root, False)}
        self._twins: list[tuple[str, str]] = []  # (twin, the directory it becomes)
        self._temps: list[tuple[str, str]] = []  # (temp file, destination)
        self._streamed: list[tuple[str, str | None, int]] = []  # (path, rename to, size)
        self._failures: list[BaseException] = []  # the writers' errors, first one first
        self._writers = [_Writer(self._failures) for _ in range(self._WORKERS)]
        self._owner: dict[str, _Writer] = {}
        self._queued = self._drained = 0
        self._committed = False
        for writer in self._writers:
            writer.start()

    def write(self, destination: str, data: bytes, mode: int) -> None:
        """Stage `data` (already verified) in the background, unless identical there."""
        where, path, compare_with = self._staging_path(destination)
        writer = self._owner.get(where)
        if writer is None:
            writer = self._owner[where] = self._writers[len(self._owner) % len(self._writers)]
        writer.jobs.put((path, data, mode, compare_with))
        self._queued += len(data)
        if self._failures:
            raise self._failures[0]
        if self._queued - self._drained > _IN_FLIGHT_BYTES:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        """Block while more than _IN_FLIGHT_BYTES wait for the writers (bounded memory)."""
        while True:
            self._drained = sum(writer.done_bytes for writer in self._writers)
            if self._queued - self._drained <= _IN_FLIGHT_BYTES:
                return
            if self._failures:
                raise self._failures[0]
            time.sleep(0.001)

    def stream(self, destination: str, reader: VerifiedReader, mode: int) -> None:
        """Stage a large member from the bundle stream, here (the stream is sequential)."""
        _where, path, compare_with = self._staging_path(destination)
        if compare_with is not None:
            _refuse_directory(destination)
        _make_directories(os.path.dirname(path))
        with os.fdopen(os.open(path, _NEW_FILE, _safe_mode(mode)), "wb") as out:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
            reader.finish()
        self._streamed.append((path, compare_with, reader.entry.size))

    def _staging_path(self, destination: str) -> tuple[str, str, str | None]:
        """(directory, path) where `destination` is written before the commit, and the
        destination again when that path is a temp name beside it rather than in a twin."""
        directory, name = os.path.split(destination)
        where, staged = self._place(directory)
        if staged:
            return where, os.path.join(where, name), None
        temp = os.path.join(where, f".warmer-{self._token}-{len(self._temps)}.tmp")
        self._temps.append((temp, destination))
        return where, temp, destination

    def _place(self, directory: str) -> tuple[str, bool]:
        """(where files bound for `directory` go, staged?): the directory itself when it
        exists, else inside the twin of its topmost missing ancestor (registered here, before
        a writer makes it)."""
        known = self._placed.get(directory)
        if known is not None:
            return known
        missing: list[str] = []
        current = directory
        while (known := self._placed.get(current)) is None and not _is_directory(current):
            missing.append(current)
            current = os.path.dirname(current)
        if known is None:
            self._check_contained(current)
            _sweep_dead_staging(current, self._staged_by)
            known = self._placed[current] = (current, False)
        where, staged = known
        if missing and not staged:
            top = missing.pop()
            where = os.path.join(current, f".warmer-{self._token}-d{len(self._twins)}.tmp")
            self._twins.append((where, top))
            self._placed[top] = (where, True)
            current = top
        for path in missing:
            self._placed[path] = (where + path[len(current) :], True)
        return self._placed[directory]

    def _check_contained(self, directory: str) -> None:
        """With --root, refuse a directory that a symbolic link under the root leads out of
        it: writing there would write outside the root. Without --root the user's own links
        are followed."""
        if self._real_root is None:
            return
        real = os.path.realpath(directory)
        if real != self._real_root and not real.startswith(self._real_root + "/"):
            raise UsageError(
                f"{directory} leads to {real} through a symbolic link, outside --root "
                f"{self._real_root}: refused (restore writes only under --root)"
            )

    def commit(self) -> tuple[int, int, int]:
        """Wait for every write (the first error is raised), then rename all into place.

        Returns (written, bytes written, skipped as identical).
        """
        self._stop_writers()
        if self._failures:
            raise self._failures[0]
        for twin, directory in self._twins:
            _publish_directory(twin, directory)
        renames = [(path, to) for path, to, _size in self._streamed if to is not None]
        for writer in self._writers:
            renames += writer.renames
        for temp, destination in renames:
            os.replace(temp, destination)
        self._committed = True
        return (
            sum(w.written for w in self._writers) + len(self._streamed),
            sum(w.bytes_written for w in self._writers) + sum(s for *_, s in self._streamed),
            sum(w.skipped for w in self._writers),
        )

    def _stop_writers(self) -> None:
        for writer in self._writers:
            writer.jobs.put(None)
        for writer in self._writers:
            writer.join()

    def close(self) -> None:
        if self._committed:
            return
        for writer in self._writers:
            writer.cancelled = True  # what is still queued is removed anyway
        self._stop_writers()
        for twin, _directory in self._twins:
            shutil.rmtree(twin, ignore_errors=True)
        for temp, _destination in self._temps:
            Path(temp).unlink(missing_ok=True)
        for directory in reversed(self._made_root):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


#: (path to create, verified bytes, mode, the destination when the path is a temp beside it)
_Job = tuple[str, bytes, int, "str | None"]
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class _Writer(threading.Thread):
    """Creates the files routed to it; once any writer failed, it only drains its queue."""

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__(name="warmer-restore-writer", daemon=True)
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.renames: list[tuple[str, str]] = []
        self.cancelled = False
        self._failures = failures
        self.written = self.bytes_written = self.skipped = self.done_bytes = 0
        self._made: set[str] = set()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if not self._failures and not self.cancelled:
                try:
                    self._write(*job)
                except BaseException as exc:  # raised again on the main thread
                    self._failures.append(exc)
            self.done_bytes += len(job[1])

    def _write(self, path: str, data: bytes, mode: int, destination: str | None) -> None:
        if destination is None:
            directory = os.path.dirname(path)
            if directory not in self._made:
                _make_directories(directory)
                self._made.add(directory)
        elif _same_bytes(destination, data):
            self.skipped += 1
            return
        else:
            self.renames.append((path, destination))
        fd = os.open(path, _NEW_FILE, _safe_mode(mode))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self.written += 1
        self.bytes_written += len(data)


#: `.warmer-<scope>-<pid>-<start>-<random>-<n>.tmp`: staged by the process pid, started at
#: start, in scope (one kernel boot and pid namespace): a twin directory when n is d<digits>
_STAGED_RE = re.compile(r"\.warmer-([0-9a-f]{8}-\d+-\d+)-[0-9a-f]{6}-d?\d+\.tmp")


def _staging_owner() -> str | None:
    """`<scope>-<pid>-<start time>` of this process, so that a later restore can tell that
    what it staged is left over from a process that is gone (killed); None without /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    scope = hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:8]
    pid = os.getpid()
    return f"{scope}-{pid}-{_start_time(pid)}"


def _start_time(pid: int) -> str | None:
    """When process pid started (clock ticks since boot), None when there is no such process:
    with the pid, it names one process even after pids are reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return None


def _sweep_dead_staging(directory: str, owner: str | None) -> None:
    """Remove what killed restores staged in `directory`: twins and temp files whose process
    is gone. Only a process of this boot and pid namespace can be checked; others are left."""
    if owner is None:
        return
    scope = owner.split("-", 1)[0]
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(".warmer-")]
    except OSError:
        return
    for name in names:
        match = _STAGED_RE.fullmatch(name)
        if match is None:
            continue
        their_scope, pid, start = match.group(1).split("-")
        if their_scope != scope or _start_time(int(pid)) == start:
            continue  # another namespace's, or its process still runs
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _publish_directory(twin: str, directory: str) -> None:
    """Rename a staged twin into place; merge it file by file when another process made the
    directory meanwhile (two restores of one bundle into one root both succeed)."""
    try:
        os.rename(twin, directory)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    for parent, _dirs, files in os.walk(twin):
        target = directory + parent[len(twin) :]
        _make_directories(target)
        for name in files:
            os.replace(os.path.join(parent, name), os.path.join(target, name))
    shutil.rmtree(twin)


def _is_directory(path: str) -> bool:
    """Whether `path` is a directory (or a link to one); anything else in the way is refused
    now, before a byte is written, rather than at the commit."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return True
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.islink(path):
            return False
        raise BundleError(
            f"{path} is a dangling symbolic link here, where the bundle needs a directory: refused"
        ) from None
    except OSError as exc:  # a loop of links, a permission
        raise BundleError(f"{path}: {exc.strerror}, where the bundle needs a directory") from None
    raise BundleError(f"{path} is a file here, where the bundle needs a directory: refused")


def _make_directories(path: str) -> list[str]:
    """`mkdir -p path`, 0o755 (less the umask) at every level where os.makedirs gives the
    levels above 0o777; returns the directories it made, outermost first. A directory that
    another writer makes meanwhile is fine."""
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    made: list[str] = []
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o755)
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise
                continue
            made.append(directory)
    except BaseException:
        for directory in reversed(made):
            os.rmdir(directory)
        raise
    return made


def _safe_mode(mode: int) -> int:
    """The mode a restored file is created with (the umask then applies): the bundle's, less
    setuid, setgid, sticky and group or other write. A cache file that another user can
    replace is code that user runs as you."""
    return mode & 0o755
