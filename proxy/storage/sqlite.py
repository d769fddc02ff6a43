"""The base of the account stores: one SQLite connection per store, opened on first use.

Stores are built on the event loop (cheaply: nothing is opened there) and used from worker
threads; the lock keeps one thread at a time on the connection, so a store can be shared by
every request of an app.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from llm_proxy.storage.request_log import open_database

__all__ = ["SqliteStore"]


class SqliteStore:
    """Subclasses create their tables in ``_setup`` and reach the database through ``_db()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._database: sqlite_utils.Database | None = None
        self._lock = threading.Lock()

    def _setup(self, db: sqlite_utils.Database) -> None:
        """Create this store's tables if missing (called once, under the lock)."""

    @contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        with self._lock:
            if self._database is None:
                db = open_database(self.path)
                try:
                    self._setup(db)
                except BaseException:
                    db.close()
                    raise
                self._database = db
            yield self._database

    def close(self) -> None:
        with self._lock:
            if self._database is not None:
                self._database.close()
                self._database = None
