"""The sqlite index: refs, the objects each snapshot reaches, creation and last-access times.

Objects and manifests in the object store are the content; this index is what names them.
It answers `ls`, `show` and ref lookups without reading manifests, and gives gc and prune
the set of live objects. WAL mode lets readers work while one process writes; every write is
one transaction, so a killed process leaves either the old row or the new one.
"""

from __future__ import annotations

import contextlib
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
SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS refs (
        ref TEXT PRIMARY KEY,
        snapshot TEXT NOT NULL,
        name TEXT NOT NULL,
        env_tag TEXT NOT NULL,
        content_id TEXT NOT NULL,
        files INTEGER NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        last_access REAL NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS refs_by_snapshot ON refs(snapshot)",
    "CREATE INDEX IF NOT EXISTS refs_by_name ON refs(name)",
    "CREATE INDEX IF NOT EXISTS refs_by_content ON refs(content_id)",
    """CREATE TABLE IF NOT EXISTS snapshot_objects (
        snapshot TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (snapshot, digest)
    ) WITHOUT ROWID""",
)
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
    """One ref and what it points at: a row of `warmer ls`."""

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

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the snapshot digest, as tables show it."""
        return self.snapshot.split(":", 1)[1][:12]


def _info(row: Sequence[Any]) -> SnapshotInfo:
    ref, snapshot, name, env_tag, content_id, files, size, created, last_access, pinned = row
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
        """Point `manifest.ref` at the manifest; a new snapshot gets a new creation time.

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
            if old is not None:
                self._forget_if_unreferenced(old.snapshot)
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
    def touch(self, ref: str, now: float) -> None:
        self._db.execute("UPDATE refs SET last_access = ? WHERE ref = ?", (now, ref))

    @_serialized
    def set_pinned(self, ref: str, pinned: bool) -> None:
        self._db.execute("UPDATE refs SET pinned = ? WHERE ref = ?", (int(pinned), ref))

    @_serialized
    def remove(self, refs: Iterable[tuple[str, str]]) -> None:
        """Delete `(ref, snapshot)` rows, skipping refs that moved to another snapshot since."""
        with self._transaction():
            for ref, snapshot in refs:
                self._db.execute("DELETE FROM refs WHERE ref = ? AND snapshot = ?", (ref, snapshot))
                self._forget_if_unreferenced(snapshot)

    @_serialized
    def live_objects(self) -> set[str]:
        """Every object a ref reaches: its manifest and the manifest's files."""
        rows = self._db.execute(
            "SELECT snapshot FROM refs UNION "
            "SELECT digest FROM snapshot_objects WHERE snapshot IN (SELECT snapshot FROM refs)"
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
            "FROM snapshot_objects WHERE snapshot IN (SELECT snapshot FROM refs))"
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
        """Drop the object rows of a snapshot that no ref points at any more."""
        self._db.execute(
            "DELETE FROM snapshot_objects WHERE snapshot = ? "
            "AND NOT EXISTS (SELECT 1 FROM refs WHERE snapshot = ?)",
            (snapshot, snapshot),
        )

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)
