"""The request log in SQLite, written off the event loop.

Requests hand finished rows to a bounded queue and never wait: one writer thread drains it
every ~100 ms in batches, one transaction per batch, so disk latency never reaches a client. When the
queue is full the row is dropped, counted and logged rather than blocking a request.
Shutdown (or, failing that, interpreter exit) drains whatever is queued.

The same transaction keeps the usage rollup (``usage_hourly``/``usage_daily``) in step, so
usage analytics read sums instead of scanning the log; see docs/usage-api.md for why it is
shaped as it is.
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from types import NoneType
from typing import Any, NamedTuple, get_args, get_type_hints

import sqlite_utils

from llm_proxy.core import metrics

__all__ = [
    "DAY",
    "HISTOGRAM_COLUMNS",
    "HOUR",
    "LATENCY_EDGES",
    "LOG_COLUMNS",
    "SUM_COLUMNS",
    "LogRow",
    "RequestLogWriter",
    "UsageRollup",
    "open_database",
    "write_rows",
]

logger = logging.getLogger("llm_proxy.store")


class LogRow(NamedTuple):
    """One request-log row: the one declaration of the columns, their order and their types.

    A plain tuple to ``executemany`` (so no conversion per row), built by keyword so no caller
    depends on the position of a field. ``open_database`` makes the table from these fields.
    """

    ts: float
    request_id: str
    endpoint: str
    client_key_id: str | None
    requested_model: str | None
    resolved_model: str | None
    provider: str | None
    upstream_model: str | None
    status: int
    error_type: str | None
    error_message: str | None
    stream: int
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None
    cached_tokens: int | None
    usage_estimated: int
    cost_usd: float | None
    latency_ms: float
    ttft_ms: float | None
    overhead_ms: float | None
    upstream_request_id: str | None
    finish_reason: str | None
    route: str | None
    attempts: str | None
    group_name: str | None
    tags: str | None


def _column_type(hint: object) -> type:
    """The column's Python type (sqlite_utils makes it INTEGER, REAL or TEXT): the hint without None."""
    kinds = [k for k in get_args(hint) if k is not NoneType] or [hint]
    for kind in (int, float, str):
        if kinds == [kind]:
            return kind
    raise TypeError(f"request log column of unsupported type {hint!r}")


_HINTS = get_type_hints(LogRow)
# Column name -> type, in LogRow's order: the table, the INSERT and the log listing's SELECT.
LOG_COLUMNS: dict[str, type] = {name: _column_type(_HINTS[name]) for name in LogRow._fields}

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
    if not db["usage_meta"].exists():
        db.conn.executescript(_ROLLUP_SCHEMA)
    return db


# -- the usage rollup -------------------------------------------------------------------------
# A series is a combination of endpoint, provider, model, group and client at one of three
# levels: 2 keeps every dimension, 1 folds the clients together, 0 folds everything (totals).
# A query reads the lowest level that still has the dimensions it filters or groups by, so
# most read far fewer rows than the log has. Sums are kept per (series, hour) and per
# (series, day), with a latency histogram for percentiles and the range of log ids the sums
# cover, which lets the log listing skip stretches where a filter cannot match.

HOUR, DAY = 3600, 86400
# Latency histogram edges in ms, 2^(k/2) from 1 ms to ~17.5 min. Bucket 0 is below 1 ms,
# bucket i is [edge i-1, edge i), the last is open-ended: a percentile read from the summed
# histogram lies in the same bucket as the true one, so within a factor √2 of it (measured
# error ~1-3 %; finer buckets cost every upsert and every read a column each).
LATENCY_EDGES: tuple[float, ...] = tuple(2 ** (k / 2) for k in range(41))
SUM_COLUMNS = ("requests", "errors", "prompt_tokens", "completion_tokens", "reasoning_tokens",
               "cached_tokens", "cost_usd", "latency_ms")
HISTOGRAM_COLUMNS = tuple(f"h{i}" for i in range(len(LATENCY_EDGES) + 1))
_VALUES = (*SUM_COLUMNS, "min_id", "max_id", *HISTOGRAM_COLUMNS)  # an accumulator, in this order
_MIN_ID = len(SUM_COLUMNS)
_EMPTY_HISTOGRAM = (0,) * len(HISTOGRAM_COLUMNS)
_SERIES_KEY = ("level", "endpoint", "provider", "model", "group_name", "client_key_id")
_SOURCE = ("ts", "endpoint", "provider", "resolved_model", "group_name", "client_key_id", "status",
           "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens", "cost_usd", "latency_ms")
_FROM_LOG_TUPLE = itemgetter(*(LogRow._fields.index(c) for c in _SOURCE))
_FROM_ID_ROW = itemgetter(*range(1, len(_SOURCE) + 1))  # rows of "SELECT id, <_SOURCE>"

_ROLLUP_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage_series (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{c} {'INTEGER' if c == 'level' else 'TEXT'} NOT NULL" for c in _SERIES_KEY)
    + f", UNIQUE ({', '.join(_SERIES_KEY)}));\n"
    + "".join(
        f"CREATE TABLE IF NOT EXISTS {table} (series INTEGER NOT NULL, t INTEGER NOT NULL, "
        + ", ".join(f"{c} {'REAL' if c in ('cost_usd', 'latency_ms') else 'INTEGER'} NOT NULL" for c in _VALUES)
        + ", PRIMARY KEY (series, t)) WITHOUT ROWID;\n"
        for table in ("usage_hourly", "usage_daily")
    )
    + "CREATE TABLE IF NOT EXISTS usage_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);\n"
)
_UPSERT = {
    table: f"INSERT INTO {table} (series, t, {', '.join(_VALUES)}) VALUES ({', '.join('?' * (len(_VALUES) + 2))}) "
    "ON CONFLICT (series, t) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in (*SUM_COLUMNS, *HISTOGRAM_COLUMNS))
    + ", min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id)"
    for table in ("usage_hourly", "usage_daily")
}


def _aggregate(rows: Iterable[Sequence[Any]], ids: Iterable[int], pick: Callable[[Any], tuple[Any, ...]]
               ) -> dict[tuple[Any, ...], list[Any]]:
    """Sum rows (in id order) per (hour, endpoint, provider, model, group, client): the one pass per row."""
    sums: dict[tuple[Any, ...], list[Any]] = {}
    edges, first_bucket = LATENCY_EDGES, _MIN_ID + 2
    for rid, row in zip(ids, rows, strict=True):
        ts, endpoint, provider, model, group, client, status, prompt, completion, reasoning, cached, cost, latency = (
            pick(row))
        key = (int((ts or 0) // HOUR) * HOUR, endpoint or "", provider or "", model or "", group or "", client or "")
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0, 0, 0, 0, 0, 0, 0.0, 0.0, rid, rid, *_EMPTY_HISTOGRAM]
        acc[0] += 1
        if status is not None and status >= 400:
            acc[1] += 1
        if prompt:
            acc[2] += prompt
        if completion:
            acc[3] += completion
        if reasoning:
            acc[4] += reasoning
        if cached:
            acc[5] += cached
        if cost:
            acc[6] += cost
        if latency is not None:
            acc[7] += latency
            acc[first_bucket + bisect_right(edges, latency)] += 1
        acc[_MIN_ID + 1] = rid
    return sums


def _fold(sums: dict[Any, list[Any]], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
    """Merge sums whose keys map to the same coarser key, one column-wise pass per key."""
    parts: dict[Any, list[list[Any]]] = {}
    for k, acc in sums.items():
        parts.setdefault(key(k), []).append(acc)
    out = {}
    for k, accs in parts.items():
        if len(accs) == 1:
            out[k] = accs[0]
        else:
            merged = out[k] = [sum(column) for column in zip(*accs, strict=True)]
            merged[_MIN_ID] = min(a[_MIN_ID] for a in accs)
            merged[_MIN_ID + 1] = max(a[_MIN_ID + 1] for a in accs)
    return out


def _levels(sums: dict[tuple[Any, ...], list[Any]]) -> dict[str, dict[tuple[tuple[Any, ...], int], list[Any]]]:
    """The (hour, dimensions) sums as rows of both tables at all three levels, each folded from the finer one."""
    every = {((2, *dims), hour): acc for (hour, *dims), acc in sums.items()}
    no_client = _fold(every, lambda k: ((1, *k[0][1:5], ""), k[1]))
    totals = _fold(no_client, lambda k: ((0, "", "", "", "", ""), k[1]))
    hourly = {**every, **no_client, **totals}
    return {"usage_hourly": hourly, "usage_daily": _fold(hourly, lambda k: (k[0], k[1] - k[1] % DAY))}


class UsageRollup:
    """Keeps the usage tables in step with request_logs, inside the log writer's transactions.

    ``usage_meta.rolled_up_id`` is the last log id the rollup covers. A batch adds itself only
    when it directly follows that id; otherwise (a database from before the rollup, rows from
    an older version) ``catch_up`` reads the missing rows back from the log, a chunk at a time.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._series: dict[tuple[Any, ...], int] = {}

    def covered(self) -> int:
        row = self.conn.execute("SELECT value FROM usage_meta WHERE key = 'rolled_up_id'").fetchone()
        return row[0] if row else 0

    def record(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Roll up log tuples just inserted in the open transaction; False when catch_up must do it."""
        if not rows:
            return True
        last = self.conn.execute("SELECT max(id) FROM request_logs").fetchone()[0]
        first = last - len(rows) + 1
        if self.covered() != first - 1:
            return False
        return self._add(rows, range(first, last + 1), _FROM_LOG_TUPLE, last)

    def catch_up(self, chunk: int = 20_000) -> int:
        """Roll up the next ``chunk`` log rows the rollup lacks, in one transaction; 0 when in step."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            rows = self.conn.execute(
                f"SELECT id, {', '.join(_SOURCE)} FROM request_logs WHERE id > ? ORDER BY id LIMIT ?",
                (self.covered(), chunk),
            ).fetchall()
            if rows and not self._add(rows, [r[0] for r in rows], _FROM_ID_ROW, rows[-1][0]):
                raise RuntimeError("usage rollup: log rows it cannot sum")
        return len(rows)

    def forget(self) -> None:
        """Drop cached series ids: the transaction that made some of them was rolled back."""
        self._series.clear()

    def _add(self, rows: Sequence[Sequence[Any]], ids: Iterable[int], pick: Callable[[Any], tuple[Any, ...]],
             last: int) -> bool:
        try:
            levels = _levels(_aggregate(rows, ids, pick))
        except (TypeError, ValueError):  # a malformed row must never cost the log its rows
            logger.exception("usage rollup: could not sum %d log row(s)", len(rows))
            return False
        for table, rows_of_table in levels.items():
            self.conn.executemany(_UPSERT[table], [(self._series_id(series), t, *acc)
                                                   for (series, t), acc in rows_of_table.items()])
        self.conn.execute("INSERT INTO usage_meta (key, value) VALUES ('rolled_up_id', ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (last,))
        return True

    def _series_id(self, key: tuple[Any, ...]) -> int:
        sid = self._series.get(key)
        if sid is None:
            self.conn.execute(f"INSERT OR IGNORE INTO usage_series ({', '.join(_SERIES_KEY)}) VALUES (?, ?, ?, ?, ?, ?)",
                              key)
            sid = self._series[key] = self.conn.execute(
                f"SELECT id FROM usage_series WHERE {' AND '.join(f'{c} = ?' for c in _SERIES_KEY)}", key
            ).fetchone()[0]
        return sid


def write_rows(conn: sqlite3.Connection, rollup: UsageRollup, rows: Sequence[tuple[Any, ...]]) -> bool:
    """Insert log tuples and roll them up in one transaction; False when the rollup is behind.

    The rollup works inside a savepoint: if it fails for any reason but a busy database (which
    the caller retries), the rows are still written and ``catch_up`` tries them again later.
    """
    with conn:
        conn.executemany(_INSERT, rows)
        conn.execute("SAVEPOINT rollup")
        try:
            rolled_up = rollup.record(rows)
        except sqlite3.OperationalError:
            raise
        except sqlite3.Error:
            conn.execute("ROLLBACK TO rollup")
            rollup.forget()
            logger.exception("usage rollup: could not add %d row(s); the log has them", len(rows))
            rolled_up = False
        conn.execute("RELEASE rollup")
        return rolled_up


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
        self._rows: deque[LogRow] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped_since_warning = 0
        self._last_warning = 0.0
        self.written = 0
        # writer-thread state: the rollup on its connection, and whether it must catch up
        self._rollup: UsageRollup | None = None
        self._behind = True
        self._retry_at = 0.0
        self._caught_up = 0

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

    def submit(self, row: LogRow) -> bool:
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
        self._rollup = UsageRollup(conn)
        self._behind = True  # until a catch-up finds the rollup in step with the log
        rows = self._rows
        try:
            while True:
                catching_up = self._behind and time.monotonic() >= self._retry_at
                stopping = self._stop.wait(0 if catching_up else self.flush_interval)
                if catching_up and not stopping:
                    self._catch_up()
                while rows:
                    batch = [rows.popleft() for _ in range(min(len(rows), self.batch_size))]
                    self._write(conn, batch)
                if stopping:
                    return
        finally:
            conn.close()

    def _catch_up(self) -> None:
        """Roll up one chunk of rows the rollup lacks, between batches, so logging goes on meanwhile."""
        assert self._rollup is not None
        try:
            added = self._rollup.catch_up()
        except Exception:  # the log itself goes on; the rollup tries again later
            logger.exception("usage rollup: catching up failed; trying again in a minute")
            self._rollup.forget()
            self._retry_at = time.monotonic() + 60
            return
        if added and not self._caught_up:
            logger.info("usage rollup: adding log rows written before it; usage fills in as it goes")
        self._caught_up += added
        self._behind = added > 0
        if not self._behind and self._caught_up:
            logger.info("usage rollup: added %d log row(s) written before it", self._caught_up)
            self._caught_up = 0

    def _write(self, conn: sqlite3.Connection, batch: list[LogRow]) -> None:
        assert self._rollup is not None
        for attempt in range(3):
            try:
                if not write_rows(conn, self._rollup, batch):
                    self._behind = True  # its rows wait for the next catch-up
                self.written += len(batch)
                return
            except sqlite3.OperationalError as exc:  # e.g. locked by a long reader
                self._rollup.forget()
                if attempt == 2:
                    metrics.LOG_DROPPED.inc(len(batch))
                    logger.error("request log: could not write %d row(s): %s", len(batch), exc)
                    return
                time.sleep(0.05 * (attempt + 1))
