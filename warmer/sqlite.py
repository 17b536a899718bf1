"""The one way warmer opens its sqlite indexes: WAL, a busy timeout, explicit transactions.

WAL lets readers run beside a writer; `synchronous=NORMAL` under WAL is safe against a
killed process (only power loss may lose the last commits, never consistency).
"""

from __future__ import annotations

import contextlib
import sqlite3
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
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


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
