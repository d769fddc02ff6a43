"""The request log in SQLite, written off the event loop.

Requests hand finished rows to a bounded queue and never wait: one writer thread drains it
every ~100 ms in batches, one transaction per batch, so disk latency never reaches a client. When the
queue is full the row is dropped, counted and logged rather than blocking a request.
Shutdown (or, failing that, interpreter exit) drains whatever is queued.
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import sqlite_utils

from proxy import metrics

__all__ = ["LOG_COLUMNS", "RequestLogWriter", "open_database"]

logger = logging.getLogger("llm_proxy.store")

# Column order is the order of the tuples handed to RequestLogWriter.submit().
LOG_COLUMNS: dict[str, type] = {
    "ts": float,
    "request_id": str,
    "endpoint": str,
    "client_key_id": str,
    "requested_model": str,
    "resolved_model": str,
    "provider": str,
    "upstream_model": str,
    "status": int,
    "error_type": str,
    "error_message": str,
    "stream": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "reasoning_tokens": int,
    "cached_tokens": int,
    "usage_estimated": int,
    "cost_usd": float,
    "latency_ms": float,
    "ttft_ms": float,
    "overhead_ms": float,
    "upstream_request_id": str,
    "finish_reason": str,
    "route": str,
    "attempts": str,
    "group_name": str,
    "tags": str,
}

_INSERT = (
    f"INSERT INTO request_logs ({', '.join(LOG_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in LOG_COLUMNS)})"
)


def open_database(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) the database with the request-log schema, in WAL mode."""
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    table = db.table("request_logs")
    if table.exists():  # a database from an older version: add the columns it lacks
        present = table.columns_dict
        for name, kind in LOG_COLUMNS.items():
            if name not in present:
                table.add_column(name, kind)
    else:
        table.create({"id": int, **LOG_COLUMNS}, pk="id")
        # Every index is paid on every insert: only what lookups need today (by time, by id).
        table.create_index(["ts"])
        table.create_index(["request_id"])
    return db


class RequestLogWriter:
    """Bounded queue + one writer thread. ``submit`` is safe to call from the event loop.

    The queue is a deque: ``append`` and ``popleft`` are atomic in CPython, so a request
    pays for no lock or condition variable; the writer wakes every ``flush_interval`` and
    writes what has gathered, in batches of up to ``batch_size`` rows, one transaction each.
    """

    def __init__(
        self, path: str | Path, *, queue_size: int = 50_000, batch_size: int = 1000, flush_interval: float = 0.1
    ) -> None:
        self.path = Path(path)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._rows: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped_since_warning = 0
        self._last_warning = 0.0
        self.written = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        open_database(self.path).close()  # create the schema before the first request, and fail loudly
        metrics.LOG_QUEUE_DEPTH.set_function(lambda: len(self._rows))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llm-proxy-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # drained at interpreter exit even if nobody calls close()

    @property
    def queued(self) -> int:
        return len(self._rows)

    def submit(self, row: tuple[Any, ...]) -> bool:
        if len(self._rows) < self.queue_size:
            self._rows.append(row)
            return True
        metrics.LOG_DROPPED.inc()
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning > 10:
            logger.warning(
                "request log queue full: dropped %d row(s); the disk cannot keep up", self._dropped_since_warning
            )
            self._last_warning = now
            self._dropped_since_warning = 0
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the thread."""
        if self._thread is None:
            return
        atexit.unregister(self.close)
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        db = open_database(self.path)
        conn = db.conn
        rows = self._rows
        try:
            while True:
                stopping = self._stop.wait(self.flush_interval)
                while rows:
                    batch = [rows.popleft() for _ in range(min(len(rows), self.batch_size))]
                    self._write(conn, batch)
                if stopping:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        for attempt in range(3):
            try:
                with conn:
                    conn.executemany(_INSERT, batch)
                self.written += len(batch)
                return
            except sqlite3.OperationalError as exc:  # e.g. locked by a long reader
                if attempt == 2:
                    metrics.LOG_DROPPED.inc(len(batch))
                    logger.error("request log: could not write %d row(s): %s", len(batch), exc)
                    return
                time.sleep(0.05 * (attempt + 1))
