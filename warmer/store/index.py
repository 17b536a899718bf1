"""The sqlite index: refs, the objects each snapshot reaches, creation and last-access times.

A commit that moves a ref keeps the snapshot it pointed at as a `history` row of that ref:
still listed (`warmer ls --all`), still resolvable by id, still live for gc, until a prune or
`warmer rm` drops it. So nothing a ref held goes without the user asking.

Objects and manifests in the object store are the content; this index is what names them.
It answers `ls`, `show` and ref lookups without reading manifests, and gives gc and prune
the set of live objects. WAL mode lets readers work while one process writes; every write is
one transaction, so a killed process leaves either the old row or the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from warmer.errors import StoreError
from warmer.sqlite import connect, transaction
from warmer.store.manifest import Manifest

P = ParamSpec("P")
R = TypeVar("R")
SCHEMA_VERSION = 2  # 2: the history table (an older warmer would sweep its snapshots)
#: The columns of a ref row, shared by `history` (a ref's earlier snapshots).
_ROW = """
        ref TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        name TEXT NOT NULL,
        env_tag TEXT NOT NULL,
        content_id TEXT NOT NULL,
        files INTEGER NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        last_access REAL NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0"""
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS refs ({_ROW}, PRIMARY KEY (ref)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS refs_by_snapshot ON refs(snapshot)",
    "CREATE INDEX IF NOT EXISTS refs_by_name ON refs(name)",
    "CREATE INDEX IF NOT EXISTS refs_by_content ON refs(content_id)",
    """CREATE TABLE IF NOT EXISTS snapshot_objects (
        snapshot TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (snapshot, digest)
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS history ({_ROW},
        replaced REAL NOT NULL,
        PRIMARY KEY (ref, snapshot)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS history_by_snapshot ON history(snapshot)",
)
#: Every snapshot something holds: a ref, or a ref's history.
_HELD = "SELECT snapshot FROM refs UNION SELECT snapshot FROM history"
_COLUMNS = "ref, snapshot, name, env_tag, content_id, files, size, created, last_access, pinned"
#: Upper bound of every string that starts with a given hex prefix.
_AFTER_HEX = "g"


def peek_refs(path: Path) -> list[str]:
    """Every ref of the index at `path`, read only: nothing created, locked or migrated (shell
    completion reads it at each Tab); [] when there is no index or it cannot be read."""
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return [row[0] for row in db.execute("SELECT ref FROM refs ORDER BY ref")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


@dataclass(frozen=True)
class SnapshotInfo:
    """One ref and what it points at: a row of `warmer ls`; with `replaced` set, a snapshot
    the ref pointed at before (a history row, `warmer ls --all`)."""

    ref: str
    snapshot: str
    name: str
    env_tag: str
    content_id: str
    files: int
    size: int
    created: float
    last_access: float
    pinned: bool
    replaced: float | None = None

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the snapshot digest, as tables show it."""
        return self.snapshot.split(":", 1)[1][:12]


def _info(row: Sequence[Any]) -> SnapshotInfo:
    ref, snapshot, name, env_tag, content_id, files, size, created, last_access, pinned = row[:10]
    return SnapshotInfo(
        ref=str(ref),
        snapshot=str(snapshot),
        name=str(name),
        env_tag=str(env_tag),
        content_id=str(content_id),
        files=int(files),
        size=int(size),
        created=float(created),
        last_access=float(last_access),
        pinned=bool(pinned),
        replaced=float(row[10]) if len(row) > 10 else None,
    )


def _serialized(method: Callable[Concatenate[Index, P], R]) -> Callable[Concatenate[Index, P], R]:
    """One call at a time on the shared connection (harvests put and commit from threads)."""

    @functools.wraps(method)
    def call(self: Index, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._guard:
            return method(self, *args, **kwargs)

    return call


class Index:
    """A connection to `index.sqlite`; one per Store, shared by its threads."""

    def __init__(self, path: Path, *, busy_timeout: float) -> None:
        self._guard = threading.RLock()
        try:
            self._db = connect(path, busy_timeout=busy_timeout, any_thread=True)
            with self._transaction():
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{path} was written by a newer warmer (index schema {version})"
                    )
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store index {path}: {exc}") from exc

    @_serialized
    def close(self) -> None:
        self._db.close()

    @_serialized
    def put(self, manifest: Manifest, manifest_size: int, now: float) -> SnapshotInfo:
        """Point `manifest.ref` at the manifest; a new snapshot gets a new creation time, and
        the one it replaces becomes a history row of the ref (the pin stays with the ref).

        The snapshot's objects are recorded with the manifest object among them, so that
        gc marks and prune counts manifests like any other object.
        """
        snapshot = manifest.digest
        with self._transaction():
            old = self.get(manifest.ref)
            if old is not None and old.snapshot == snapshot:
                created, pinned = old.created, old.pinned
            else:
                created, pinned = now, old.pinned if old is not None else False
            self._db.execute(
                f"INSERT OR REPLACE INTO refs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    manifest.ref,
                    snapshot,
                    manifest.name,
                    manifest.env_tag,
                    manifest.content_id,
                    len(manifest.files),
                    manifest.total_size,
                    created,
                    now,
                    int(pinned),
                ),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO snapshot_objects (snapshot, digest, size) VALUES (?,?,?)",
                [
                    (snapshot, snapshot, manifest_size),
                    *((snapshot, entry.digest, entry.size) for entry in manifest.files),
                ],
            )
            self._db.execute(
                "DELETE FROM history WHERE ref = ? AND snapshot = ?", (manifest.ref, snapshot)
            )
            if old is not None and old.snapshot != snapshot:
                self._db.execute(
                    f"INSERT OR REPLACE INTO history ({_COLUMNS}, replaced) "
                    "VALUES (?,?,?,?,?,?,?,?,?,0,?)",
                    (*dataclasses.astuple(old)[:9], now),
                )
        info = self.get(manifest.ref)
        assert info is not None
        return info

    @_serialized
    def get(self, ref: str) -> SnapshotInfo | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM refs WHERE ref = ?", (ref,)).fetchone()
        return _info(row) if row else None

    @_serialized
    def by_name(self, name: str) -> list[SnapshotInfo]:
        return self._select("WHERE name = ? ORDER BY ref", (name,))

    @_serialized
    def by_hex_prefix(self, prefix: str) -> list[SnapshotInfo]:
        """Refs whose snapshot digest or content id starts with the hex `prefix`."""
        snapshot_prefix = f"blake3:{prefix}"
        return self._select(
            "WHERE (snapshot >= ? AND snapshot < ?) OR (content_id >= ? AND content_id < ?) "
            "ORDER BY ref",
            (snapshot_prefix, snapshot_prefix + _AFTER_HEX, prefix, prefix + _AFTER_HEX),
        )

    @_serialized
    def all(self) -> list[SnapshotInfo]:
        return self._select("ORDER BY ref", ())

    @_serialized
    def history(self, ref: str | None = None) -> list[SnapshotInfo]:
        """Earlier snapshots of `ref` (of every ref when None), newest replacement first."""
        where, parameters = ("WHERE ref = ? ", (ref,)) if ref is not None else ("", ())
        rows = self._db.execute(
            f"SELECT {_COLUMNS}, replaced FROM history {where}ORDER BY ref, replaced DESC",
            parameters,
        )
        return [_info(row) for row in rows]

    @_serialized
    def history_by_hex_prefix(self, prefix: str) -> list[SnapshotInfo]:
        """History rows whose snapshot digest starts with the hex `prefix`."""
        snapshot_prefix = f"blake3:{prefix}"
        rows = self._db.execute(
            f"SELECT {_COLUMNS}, replaced FROM history WHERE snapshot >= ? AND snapshot < ? "
            "ORDER BY ref, replaced DESC",
            (snapshot_prefix, snapshot_prefix + _AFTER_HEX),
        )
        return [_info(row) for row in rows]

    @_serialized
    def touch(self, info: SnapshotInfo, now: float) -> None:
        table = "refs" if info.replaced is None else "history"
        self._db.execute(
            f"UPDATE {table} SET last_access = ? WHERE ref = ? AND snapshot = ?",
            (now, info.ref, info.snapshot),
        )

    @_serialized
    def set_pinned(self, ref: str, pinned: bool) -> None:
        self._db.execute("UPDATE refs SET pinned = ? WHERE ref = ?", (int(pinned), ref))

    @_serialized
    def remove(
        self, rows: Iterable[SnapshotInfo], *, keep_pinned: bool, keep_used: bool
    ) -> list[SnapshotInfo]:
        """Delete ref and history rows as planned, in one transaction; returns those deleted.

        Re-checked here, under the caller's exclusive lock: a ref moved to another snapshot
        since the plan is kept, and so is a row pinned since (`keep_pinned`) or used since
        (`keep_used`: its last access is not the planned one).
        """
        removed = []
        with self._transaction():
            for info in rows:
                table = "refs" if info.replaced is None else "history"
                where = "ref = ? AND snapshot = ?"
                parameters: tuple[object, ...] = (info.ref, info.snapshot)
                if keep_pinned:
                    where += " AND pinned = 0"
                if keep_used:
                    where += " AND last_access = ?"
                    parameters += (info.last_access,)
                cursor = self._db.execute(f"DELETE FROM {table} WHERE {where}", parameters)
                if cursor.rowcount:
                    removed.append(info)
                    self._forget_if_unreferenced(info.snapshot)
        return removed

    @_serialized
    def live_objects(self) -> set[str]:
        """Every object a ref or its history reaches: manifests and their files."""
        rows = self._db.execute(
            f"{_HELD} UNION SELECT digest FROM snapshot_objects WHERE snapshot IN ({_HELD})"
        )
        return {digest for (digest,) in rows}

    @_serialized
    def objects_of(self, snapshots: Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """The objects `(digest, size)` of each snapshot, its manifest included."""
        found: dict[str, list[tuple[str, int]]] = {}
        for snapshot in set(snapshots):
            rows = self._db.execute(
                "SELECT digest, size FROM snapshot_objects WHERE snapshot = ?", (snapshot,)
            )
            found[snapshot] = [(str(digest), int(size)) for digest, size in rows]
        return found

    @_serialized
    def stored_size(self) -> int:
        """Bytes of the distinct objects that refs reach (what dedup leaves on disk)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT digest, size "
            f"FROM snapshot_objects WHERE snapshot IN ({_HELD}))"
        ).fetchone()
        return int(row[0])

    @_serialized
    def problems(self) -> list[str]:
        """What sqlite's own consistency check finds (empty when fine)."""
        rows = [str(row[0]) for row in self._db.execute("PRAGMA quick_check")]
        return [] if rows == ["ok"] else [f"index: {row}" for row in rows]

    def _select(self, where: str, parameters: tuple[object, ...]) -> list[SnapshotInfo]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM refs {where}", parameters)
        return [_info(row) for row in rows]

    def _forget_if_unreferenced(self, snapshot: str) -> None:
        """Drop the object rows of a snapshot that no ref or history row holds any more."""
        self._db.execute(
            "DELETE FROM snapshot_objects WHERE snapshot = ? "
            "AND NOT EXISTS (SELECT 1 FROM refs WHERE snapshot = ?) "
            "AND NOT EXISTS (SELECT 1 FROM history WHERE snapshot = ?)",
            (snapshot, snapshot, snapshot),
        )

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)
