"""Harvest: turn the files a warm-up wrote into store objects and manifest entries.

Two sources feed the same collector: directories on this host (`warmer save`, the local
runtime) and tar streams out of a container (the docker runtime). Each file is classified by
the cache root that holds it; files that match no kind are listed, so a user sees what was
left out. Triton group files are re-pointed when a file is recorded at another path than
where it was found, so that even a plain `tar -x` / Docker `ADD` of the bundle hits.
`snapshot` commits what a harvest collected to the store as one manifest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from warmer.caches import (
    CacheRoot,
    classify,
    is_ignored,
    is_triton_group,
    relocate,
    rewrite_group,
)
from warmer.envkey import EnvKey
from warmer.progress import Progress
from warmer.store import SnapshotInfo, Store
from warmer.store.manifest import FileEntry, Manifest

#: One put thread per core (at most 8): puts are short and release the GIL at every system
#: call, so more threads than cores spend their time handing the GIL over (on 2 cores, 8
#: threads ingested 1.25x slower than 2).
_PARALLEL_PUTS = min(8, os.cpu_count() or 2)


@dataclass
class Harvest:
    """What a harvest collected: manifest entries, the new files that matched no kind, and
    the files that hold a secret's value (`(path, secret name)`: never stored)."""

    entries: list[FileEntry] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    leaks: list[tuple[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)

    def kinds(self) -> dict[str, dict[str, int]]:
        """Files and bytes per cache kind, for summaries."""
        totals: dict[str, dict[str, int]] = {}
        for entry in self.entries:
            kind = totals.setdefault(entry.kind, {"files": 0, "bytes": 0})
            kind["files"] += 1
            kind["bytes"] += entry.size
        return totals


def walk_roots(roots: Sequence[CacheRoot]) -> Iterator[tuple[str, str]]:
    """(absolute path, kind) of every regular file under `roots`, each file once.

    Links are not followed and not taken: a bundle never holds one. A nested root (say a
    Triton cache inside Inductor's directory) claims its files by the longest-prefix rule.
    """
    seen: set[str] = set()
    for root in roots:
        if not os.path.isdir(root.path):
            continue
        for directory, dirnames, filenames in os.walk(root.path):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(directory, name)
                if path in seen or is_ignored(os.path.relpath(path, root.path)):
                    continue
                seen.add(path)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    yield path, classify(path, roots) or root.kind


def collect_host_files(
    store: Store,
    files: Iterable[tuple[str, str]],
    *,
    mapping: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Harvest:
    """Store host files `(path, kind)`; each is recorded at `relocate(path, mapping)`."""
    mapping = mapping or {}
    harvest = Harvest()
    done = [0, 0]

    def put(item: tuple[str, str]) -> FileEntry:
        path, kind = item
        recorded = relocate(path, mapping)
        mode = os.lstat(path).st_mode & 0o777
        if recorded != path and is_triton_group(path):
            data = Path(path).read_bytes()
            data = rewrite_group(data, os.path.dirname(recorded)) or data
            digest, size = store.put_bytes(data), len(data)
        else:
            digest, size = store.put_file(Path(path))
        return FileEntry(path=recorded, kind=kind, digest=digest, size=size, mode=mode)

    with ThreadPoolExecutor(_PARALLEL_PUTS) as pool:
        for entry in pool.map(put, files):
            harvest.entries.append(entry)
            done[0] += 1
            done[1] += entry.size
            if progress:
                progress("files", {"files": done[0], "bytes": done[1]})
    return harvest


class SecretScan:
    """Looks for secret values in bytes as they stream past, once per byte whatever the
    number of secrets: a value split across two reads is found too (the end of each read is
    kept for the next). `needles` maps a secret's name to the byte strings that give it away
    (`warmer.runtimes.base.secret_pieces`)."""

    def __init__(self, needles: Mapping[str, Sequence[bytes]]) -> None:
        self.needles = {name: pieces for name, pieces in needles.items() if pieces}
        longest = max((len(p) for pieces in self.needles.values() for p in pieces), default=1)
        self._keep = longest - 1
        self._tail = b""
        #: the names of the secrets found so far
        self.found: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk
        for name, pieces in self.needles.items():
            if name not in self.found and any(piece in window for piece in pieces):
                self.found.add(name)
        self._tail = window[-self._keep :] if self._keep else b""

    def reader(self, stream: BinaryIO) -> BinaryIO:
        """`stream`, fed to this scan as it is read (`read` is all that a put calls)."""
        return cast(BinaryIO, _Scanned(stream, self))


class _Scanned:
    def __init__(self, stream: BinaryIO, scan: SecretScan) -> None:
        self.stream, self.scan = stream, scan

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.scan.feed(chunk)
        return chunk


def collect_stream(
    store: Store,
    members: Iterable[tuple[str, int, int, BinaryIO]],
    roots: Sequence[CacheRoot],
    *,
    wanted: Callable[[str], bool] = lambda _path: True,
    mapping: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    secrets: Mapping[str, Sequence[bytes]] | None = None,
) -> Harvest:
    """Store the `wanted` files streamed out of a run: `(absolute path, size, mode, reader)`.

    Files under no root are listed as unclassified, not stored. Each file is recorded at
    `relocate(path, mapping)`. A file holding one of the `secrets` (name -> the byte strings
    that give it away) is listed in `leaks` and kept out of the store: it is scanned as it is
    read, and a large one that was streamed into the store already is dropped from it again.
    """
    mapping = mapping or {}
    harvest = Harvest()
    for path, size, mode, reader in members:
        if not wanted(path):
            continue
        kind = classify(path, roots)
        root = next((r.path for r in roots if path.startswith(r.path.rstrip("/") + "/")), None)
        if kind is None or root is None:
            harvest.unclassified.append(path)
            continue
        if is_ignored(os.path.relpath(path, root)):
            continue
        recorded = relocate(path, mapping)
        scan = SecretScan(secrets or {})
        if size <= 16 << 20:
            data = reader.read()
            if recorded != path and is_triton_group(path):
                data = rewrite_group(data, os.path.dirname(recorded)) or data
            scan.feed(data)
            if not scan.found:
                digest, size = store.put_bytes(data), len(data)
        else:
            digest, size = store.put_stream(scan.reader(reader), size)
            if scan.found:
                store.discard([digest])
        if scan.found:
            harvest.leaks.extend((recorded, name) for name in sorted(scan.found))
            continue
        harvest.entries.append(
            FileEntry(path=recorded, kind=kind, digest=digest, size=size, mode=mode & 0o777)
        )
        if progress:
            progress("files", {"files": len(harvest.entries), "bytes": harvest.size})
    return harvest


def snapshot(
    store: Store,
    harvest: Harvest,
    *,
    name: str,
    env: EnvKey,
    job: Mapping[str, object] | None = None,
    verify: Mapping[str, object] | None = None,
    key_factors: Mapping[str, object] | None = None,
) -> tuple[SnapshotInfo, Manifest]:
    """Commit a harvest to the store as the snapshot `name@<env tag>`."""
    manifest = Manifest(
        name=name,
        env=env.to_dict(),
        env_tag=env.tag,
        env_digest=env.digest,
        files=tuple(sorted(harvest.entries, key=lambda entry: entry.path)),
        job=dict(job) if job is not None else None,
        verify=dict(verify) if verify is not None else None,
        key_factors=dict(key_factors) if key_factors is not None else None,
    )
    return store.commit(manifest), manifest
