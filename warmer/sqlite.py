"""The one way warmer opens its sqlite indexes: WAL, a busy timeout, explicit transactions.

WAL lets readers run beside a writer; `synchronous=NORMAL` under WAL is safe against a
killed process (only power loss may lose the last commits, never consistency).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path


def connect(
    path: Path, *, busy_timeout: float = 30.0, any_thread: bool = False
) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; transactions are taken with `transaction()`."""
    db = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=not any_thread
    )
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    _use_wal(db, time.monotonic() + busy_timeout)
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _use_wal(db: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL once per database file (the mode is persistent). SQLite answers "locked"
    at once, without waiting on the busy timeout, when processes open a new file together,
    so the switch is retried until the deadline."""
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; IMMEDIATE takes the write lock up front, so concurrent writers
    queue instead of deadlocking on a lock upgrade."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
