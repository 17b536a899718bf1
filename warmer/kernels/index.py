"""The kernel index: sqlite under warmer's state directory (never inside the cache, which
Triton owns). A cache directory is refreshed only for entries whose directory mtime changed;
a snapshot or bundle is indexed once per fingerprint. Hit logs are folded into `hits`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from warmer.errors import UsageError, WarmerError
from warmer.kernels.entries import (
    ENTRY_COLUMNS,
    cache_entry,
    manifest_entries,
    row,
    small_json,
    walk_entry_dirs,
)
from warmer.kernels.formats import HIT_LINE_RE, HIT_LOG_SUFFIX, Kernel, hit_log_dir, state_dir
from warmer.kernels.query import KERNEL_COLUMNS, KernelFilter, select, to_kernel
from warmer.sqlite import connect, transaction

if TYPE_CHECKING:
    from warmer.store.manifest import Manifest

#: A directory changed this recently may change again within the same mtime tick (racy-git):
#: its row is stored as unsettled, so the next scan reads it again.
_SETTLE_NS = 2_000_000_000
_UNSETTLED = -1
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sources (
        id INTEGER PRIMARY KEY,
        key TEXT UNIQUE NOT NULL,
        fingerprint TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS entries (
        source INTEGER NOT NULL,
        location TEXT NOT NULL,
        stamp INTEGER NOT NULL,
        hash TEXT NOT NULL,
        status TEXT NOT NULL,
        problem TEXT,
        detail TEXT,
        name TEXT,
        backend TEXT,
        arch TEXT,
        warp_size INTEGER,
        num_warps INTEGER,
        num_stages INTEGER,
        num_ctas INTEGER,
        shared INTEGER,
        triton_version TEXT,
        files TEXT,
        size INTEGER,
        mtime REAL,
        binary_digest TEXT,
        stale_group INTEGER,
        PRIMARY KEY (source, location)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_by_name ON entries(source, status, name)",
    # Covers the warm scan's (location, stamp) read and the stale count: a small B-tree
    # instead of the table with its file lists.
    "CREATE INDEX IF NOT EXISTS entries_by_location"
    " ON entries(source, location, stamp, status, stale_group)",
)
#: Tables that hold real data (not derivable from the caches): kept across schema changes.
_HIT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS hits (
        hash TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        last_access REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS hit_logs (
        name TEXT PRIMARY KEY,
        offset INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True, order=True)
class EntryProblem:
    """An entry that is broken or not a kernel: `reason` groups them, `detail` says which."""

    location: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Source:
    """Where kernels come from: a cache directory, a store ref or a bundle file."""

    kind: Literal["dir", "store", "bundle"]
    location: Path | str
    store_root: Path | None = None


@dataclass(frozen=True)
class Scan:
    """A source as indexed: its row id and the entries that are not kernels."""

    source: Source
    source_id: int
    problems: tuple[EntryProblem, ...]
    stale_groups: int

    def summary(self) -> str | None:
        """One line about what was skipped or will miss, or None when all is well."""
        parts = []
        if self.problems:
            reasons = Counter(p.reason for p in self.problems)
            listed = ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common())
            example = self.problems[0]
            parts.append(
                f"{len(self.problems)} entries skipped: {listed}; "
                f"e.g. {example.location}: {example.detail}"
            )
        if self.stale_groups:
            parts.append(
                f"{self.stale_groups} kernels have group files pointing elsewhere "
                "(Triton misses them until the paths are rewritten, e.g. by warmer restore)"
            )
        return "; ".join(parts) or None


class KernelIndex:
    """The sqlite kernel index under warmer's state directory; use from one thread."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state or state_dir()
        path = self.state / "kernels.sqlite"
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            self._db = connect(path)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise WarmerError(f"kernel index {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KernelIndex:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version != _SCHEMA_VERSION:
                # Entries are derived from the caches and rebuilt; hits are real data and kept.
                self._db.execute("DROP TABLE IF EXISTS entries")
                self._db.execute("DROP TABLE IF EXISTS sources")
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            for statement in (*_SCHEMA, *_HIT_SCHEMA):
                self._db.execute(statement)

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self, source: Source) -> Scan:
        """Bring the index of `source` up to date and fold new hits; say what was skipped."""
        self.fold_hits()
        if source.kind == "dir":
            source_id = self._scan_dir(Path(source.location))
        elif source.kind == "store":
            source_id = self._scan_store(str(source.location), source.store_root)
        else:
            source_id = self._scan_bundle(Path(source.location))
        rows = self._db.execute(
            "SELECT location, problem, detail FROM entries INDEXED BY entries_by_name"
            " WHERE source = ? AND status = 'problem'",
            (source_id,),
        )
        problems = tuple(sorted(EntryProblem(*row) for row in rows))
        (stale,) = self._db.execute(
            "SELECT count(*) FROM entries WHERE source = ? AND status = 'kernel' AND stale_group",
            (source_id,),
        ).fetchone()
        return Scan(source, source_id, problems, int(stale))

    def _source_id(self, key: str, fingerprint: str) -> tuple[int, bool]:
        """The row id of a source and whether its fingerprint is still the indexed one."""
        select = "SELECT id, fingerprint FROM sources WHERE key = ?"
        row = self._db.execute(select, (key,)).fetchone()
        if row is None:
            with self._transaction():  # another process may be adding the same source
                self._db.execute(
                    "INSERT OR IGNORE INTO sources(key, fingerprint) VALUES (?, '')", (key,)
                )
                row = self._db.execute(select, (key,)).fetchone()
        return int(row[0]), row[1] == fingerprint

    def _scan_dir(self, root: Path) -> int:
        if not root.is_dir():
            raise UsageError(f"{root}: no such cache directory")
        root_str = os.path.realpath(root)
        source_id, _ = self._source_id(f"dir:{root_str}", "")
        known = dict(
            self._db.execute("SELECT location, stamp FROM entries WHERE source = ?", (source_id,))
        )
        cut = len(root_str) + 1
        seen = {path[cut:]: stamp for path, stamp in walk_entry_dirs(root_str)}
        changed = [loc for loc, stamp in seen.items() if known.get(loc) != stamp]
        gone = [loc for loc in known if loc not in seen]
        if changed or gone:
            settled_before = time.time_ns() - _SETTLE_NS
            rows = [
                row(
                    cache_entry(root_str, loc),
                    seen[loc] if seen[loc] < settled_before else _UNSETTLED,
                )
                for loc in changed
            ]
            with self._transaction():
                self._db.executemany(
                    "DELETE FROM entries WHERE source = ? AND location = ?",
                    ((source_id, loc) for loc in gone),
                )
                self._insert(source_id, rows)
        return source_id

    def _scan_store(self, ref: str, store_root: Path | None) -> int:
        from warmer.store import Store

        with Store(store_root) as store:
            info, manifest = store.resolve(ref, touch=False)
            # A snapshot never changes: indexed once, under its id, whatever names it.
            source_id, indexed = self._source_id(f"store:{info.snapshot}", info.snapshot)
            if not indexed:
                contents = {}
                for path, digest in small_json(manifest).items():
                    with store.open_object(digest) as handle:
                        contents[path] = handle.read()
                self._replace(source_id, info.snapshot, manifest, info.created, contents)
        return source_id

    def _scan_bundle(self, path: Path) -> int:
        from warmer.bundle import read_bundle

        try:
            stat = path.stat()
        except OSError as exc:
            raise UsageError(f"{path}: no such bundle ({exc.strerror})") from None
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
        source_id, same = self._source_id(f"bundle:{path.resolve()}", fingerprint)
        if not same:
            manifest, files = read_bundle(path)
            wanted = small_json(manifest)
            contents = {}
            for file_entry, stream in files:  # the whole stream is read: it is verified
                if file_entry.path in wanted:
                    contents[file_entry.path] = stream.read()
            self._replace(source_id, fingerprint, manifest, stat.st_mtime, contents)
        return source_id

    def _replace(
        self,
        source_id: int,
        fingerprint: str,
        manifest: Manifest,
        created: float,
        contents: Mapping[str, bytes],
    ) -> None:
        """Index an immutable snapshot; it is read again only when its fingerprint changes."""
        rows = [row(entry, 0) for entry in manifest_entries(manifest, created, contents)]
        with self._transaction():
            self._db.execute("DELETE FROM entries WHERE source = ?", (source_id,))
            self._insert(source_id, rows)
            self._db.execute(
                "UPDATE sources SET fingerprint = ? WHERE id = ?", (fingerprint, source_id)
            )

    def _insert(self, source_id: int, rows: Iterable[dict[str, object]]) -> None:
        columns = ", ".join(ENTRY_COLUMNS)
        values = ", ".join(f":{column}" for column in ENTRY_COLUMNS)
        self._db.executemany(
            f"INSERT OR REPLACE INTO entries(source, {columns}) VALUES (:source, {values})",
            ({"source": source_id, **row} for row in rows),
        )

    # -- listing -------------------------------------------------------------------------------

    def kernels(
        self,
        scan: Scan,
        kernel_filter: KernelFilter | None = None,
        sort: str = "name",
        now: float | None = None,
    ) -> list[Kernel]:
        """The kernels of a scanned source that pass `kernel_filter`, in `sort` order."""
        rows = self._select(
            f"{KERNEL_COLUMNS}, coalesce(h.count, 0), h.last_access",
            scan,
            kernel_filter,
            sort,
            now,
        )
        root = os.path.realpath(scan.source.location) if scan.source.kind == "dir" else None
        return [to_kernel(row, root) for row in rows]

    def kernel_ids(
        self, scan: Scan, kernel_filter: KernelFilter | None = None, sort: str = "name"
    ) -> list[str]:
        """Only the keys of what `kernels` would return (for `ls -q`: no rows to build)."""
        return [row[0] for row in self._select("e.hash", scan, kernel_filter, sort, None)]

    def _select(
        self,
        columns: str,
        scan: Scan,
        kernel_filter: KernelFilter | None,
        sort: str,
        now: float | None,
    ) -> sqlite3.Cursor:
        sql, parameters = select(columns, kernel_filter, sort, time.time() if now is None else now)
        return self._db.execute(sql, (scan.source_id, *parameters))

    # -- hits ----------------------------------------------------------------------------------

    def fold_hits(self) -> int:
        """Add the hit logs of `warmer.tracking` to the `hits` table; return the hits added.

        Each log is read from the offset folded last time, up to its last whole line, in the
        same transaction that adds the counts, so a hit is counted once whatever runs at the
        same time. A writer holds a shared flock on its log while it lives: a log whose lock
        can be taken exclusively has no writer left and is deleted once folded to its end.
        """
        log_dir = hit_log_dir(self.state)
        try:
            names = sorted(n for n in os.listdir(log_dir) if n.endswith(HIT_LOG_SUFFIX))
        except FileNotFoundError:
            return 0
        counts: Counter[str] = Counter()
        latest: dict[str, int] = {}
        finished: list[Path] = []
        with self._transaction():
            offsets = dict(self._db.execute("SELECT name, offset FROM hit_logs"))
            for name in names:
                folded = _fold_log(log_dir / name, offsets.get(name, 0), counts, latest)
                if folded is None:
                    continue
                offset, writer_gone = folded
                self._db.execute(
                    "INSERT OR REPLACE INTO hit_logs(name, offset) VALUES (?, ?)", (name, offset)
                )
                if writer_gone:
                    finished.append(log_dir / name)
            self._db.executemany(
                "INSERT INTO hits(hash, count, last_access) VALUES (?, ?, ?)"
                " ON CONFLICT(hash) DO UPDATE SET count = count + excluded.count,"
                " last_access = max(last_access, excluded.last_access)",
                ((key, count, latest[key] / 1000) for key, count in counts.items()),
            )
            # Rows of logs deleted by an earlier fold: the file is gone, so is its offset.
            self._db.executemany(
                "DELETE FROM hit_logs WHERE name = ?",
                ((name,) for name in offsets if name not in names),
            )
        for path in finished:
            path.unlink(missing_ok=True)
        return sum(counts.values())


def _fold_log(
    path: Path, offset: int, counts: Counter[str], latest: dict[str, int]
) -> tuple[int, bool] | None:
    """Count the whole lines of one log after `offset`: `(new offset, writer gone)`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            writer_gone = True
        except BlockingIOError:
            writer_gone = False
        os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    whole = data[: data.rfind(b"\n") + 1]
    for match in HIT_LINE_RE.finditer(whole):
        key, millis = match.group(1).decode("ascii"), int(match.group(2))
        counts[key] += 1
        latest[key] = max(latest.get(key, 0), millis)
    return offset + len(whole), writer_gone
