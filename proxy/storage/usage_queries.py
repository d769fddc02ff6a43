"""Usage analytics: summary, time series, breakdowns, and the request log itself.

Aggregates never scan the log: they sum the rollup the log writer keeps (``llm_proxy.storage.request_log``),
whole UTC days from ``usage_daily`` and the hours at either end from ``usage_hourly``, over
only the series the filters select, at the coarsest level that has the dimensions asked
about (totals; clients folded together; everything). Latency percentiles are read from
summed histograms. The log listing reads ``request_logs`` newest first and uses the
rollup's id ranges to skip stretches where no row can match, so a sparse filter does not
mean a scan of the whole log.

Pure functions over a sqlite3 connection; ``UsageStore`` runs them on read connections of
its own, each call in one read transaction (one snapshot).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.storage.request_log import (
    DAY,
    HISTOGRAM_COLUMNS,
    HOUR,
    LATENCY_EDGES,
    LOG_COLUMNS,
    SUM_COLUMNS,
    open_database,
)

__all__ = [
    "BREAKDOWNS",
    "DEFAULT_SPAN",
    "Filters",
    "QueryError",
    "UsageStore",
    "breakdown",
    "hour_range",
    "list_logs",
    "percentile",
    "summary",
    "timeseries",
]

DEFAULT_SPAN = 30 * DAY  # aggregates cover the last 30 days unless told otherwise
MAX_POINTS = 5000
# A row with no (or an unknown) resolved model is labelled with its group: the group is what it was priced as.
_MODEL_LABEL = "CASE WHEN {m} IN ('', 'unknown') AND {g} != '' THEN {g} ELSE {m} END"
_SERIES_DIMS = {
    "endpoint": "s.endpoint",
    "provider": "s.provider",
    "model": _MODEL_LABEL.format(m="s.model", g="s.group_name"),
    "group": "s.group_name",
    "client": "s.client_key_id",
}
_LOG_DIMS = {
    "endpoint": "endpoint",
    "provider": "provider",
    "model": _MODEL_LABEL.format(m="coalesce(resolved_model, '')", g="coalesce(group_name, '')"),
    "group": "group_name",
    "client": "client_key_id",
}
BREAKDOWNS = tuple(_SERIES_DIMS)
_SUMS = ", ".join(f"sum(u.{c})" for c in (*SUM_COLUMNS, *HISTOGRAM_COLUMNS))
_LOG_SELECT = f"SELECT id, {', '.join(LOG_COLUMNS)} FROM request_logs"
_JSON_COLUMNS = ("route", "attempts", "tags")
_WINDOW_GAP = 2048  # id ranges closer than this are scanned as one: cheaper than another query
_EVERY_ID = (0, 2**63 - 1)


class QueryError(ValueError):
    """A query this module refuses to run (e.g. too many points); the API answers it with a 400."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What a query is about. ``since``/``until`` are unix seconds; the dimensions match exactly."""

    since: float | None = None
    until: float | None = None
    endpoint: str | None = None
    provider: str | None = None
    model: str | None = None
    group: str | None = None
    client: str | None = None

    def dimensions(self) -> dict[str, str]:
        return {d: v for d in _SERIES_DIMS if (v := getattr(self, d)) is not None}


def hour_range(filters: Filters, now: float) -> tuple[int, int]:
    """The whole hours an aggregate covers: ``since`` rounded down, ``until`` up (default: the last 30 days)."""
    until = -int(-(filters.until if filters.until is not None else now) // HOUR) * HOUR
    since = int(filters.since // HOUR) * HOUR if filters.since is not None else until - DEFAULT_SPAN
    return since, until


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile of a latency histogram, interpolated log-linearly inside its bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            if i == len(LATENCY_EDGES):  # open-ended top bucket: its lower edge is all we know
                return LATENCY_EDGES[-1]
            high, fraction = LATENCY_EDGES[i], (rank - seen) / count
            if i == 0:
                return high * fraction
            low = LATENCY_EDGES[i - 1]
            return low * float((high / low) ** fraction)  # float ** float is typed Any
        seen += count
    return None  # unreachable: the loop always reaches the rank


_NOTHING = (0,) * (len(SUM_COLUMNS) + len(HISTOGRAM_COLUMNS))


def _metrics(values: Sequence[Any] | None) -> JSONObject:
    """The answer's shape for one set of sums: the same for a summary, a point and a breakdown row."""
    values = values or _NOTHING
    requests, errors, prompt, completion, reasoning, cached, cost, latency = values[:len(SUM_COLUMNS)]
    histogram = values[len(SUM_COLUMNS):]
    timed = sum(histogram)
    p50, p95 = percentile(histogram, 0.5), percentile(histogram, 0.95)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else 0.0,
        "tokens": {"prompt": prompt, "completion": completion, "reasoning": reasoning, "cached": cached,
                   "total": prompt + completion},
        "cost_usd": round(cost, 10),
        "latency_ms": {
            "avg": round(latency / timed, 3) if timed else None,
            "p50": round(p50, 3) if p50 is not None else None,
            "p95": round(p95, 3) if p95 is not None else None,
        },
    }


def _pieces(since: int, until: int, hourly: bool = False) -> list[tuple[str, int, int]]:
    """[since, until) as rollup reads: whole UTC days from usage_daily, the ragged ends from usage_hourly."""
    first_day, last_day = -(-since // DAY) * DAY, until // DAY * DAY
    if hourly or first_day >= last_day:
        return [("usage_hourly", since, until)] if since < until else []
    pieces = [("usage_daily", first_day, last_day)]
    if since < first_day:
        pieces.append(("usage_hourly", since, first_day))
    if last_day < until:
        pieces.append(("usage_hourly", last_day, until))
    return pieces


def _level(filters: Filters, by: str | None = None) -> int:
    """The rollup level to read: 2 when clients matter, 1 for other dimensions, 0 for totals."""
    dims = {*filters.dimensions(), by} - {None}
    return 2 if "client" in dims else 1 if dims else 0


def _series_where(filters: Filters, level: int) -> tuple[str, list[object]]:
    clauses = ["s.level = ?"]
    args: list[object] = [level]
    for dim, value in filters.dimensions().items():
        clauses.append(f"{_SERIES_DIMS[dim]} = ?")
        args.append(value)
    return " AND ".join(clauses), args


def _collect(conn: sqlite3.Connection, filters: Filters, since: int, until: int, *, by: str | None = None,
             bucket: int | None = None) -> dict[Any, list[Any]]:
    """Sums and histograms over the selected series: one total, or per ``by`` label, or per time bucket.

    Per label, SQL sums per series (rows arrive in series order, so no sort of wide rows) and
    the few hundred series rows are merged here.
    """
    where, args = _series_where(filters, _level(filters, by))
    if bucket is not None:
        key, group = (f"u.t - u.t % {bucket}", "GROUP BY 1")
    else:
        key, group = ("u.series", "GROUP BY 1") if by is not None else ("0", "")
    out: dict[Any, list[Any]] = {}
    for table, low, high in _pieces(since, until, hourly=bucket == HOUR):
        sql = (f"SELECT {key}, {_SUMS} FROM {table} u WHERE u.series IN (SELECT s.id FROM usage_series s "
               f"WHERE {where}) AND u.t >= ? AND u.t < ? {group}")
        for k, *values in conn.execute(sql, (*args, low, high)):
            if values[0] is None:  # a total over no rows
                continue
            have = out.get(k)
            out[k] = values if have is None else [a + b for a, b in zip(have, values, strict=True)]
    if by is None:
        return out
    labels = dict(conn.execute(f"SELECT s.id, {_SERIES_DIMS[by]} FROM usage_series s WHERE {where}", args))
    merged: dict[Any, list[Any]] = {}
    for series, values in out.items():
        label = labels[series]
        have = merged.get(label)
        merged[label] = values if have is None else [a + b for a, b in zip(have, values, strict=True)]
    return merged


def summary(conn: sqlite3.Connection, filters: Filters, *, now: float) -> JSONObject:
    since, until = hour_range(filters, now)
    return {"since": since, "until": until, **_metrics(_collect(conn, filters, since, until).get(0))}


def timeseries(conn: sqlite3.Connection, filters: Filters, bucket: Literal["hour", "day"], *, now: float
               ) -> JSONObject:
    """One point per hour or UTC day, empty ones included, so a chart needs no gap filling."""
    since, until = hour_range(filters, now)
    step = HOUR if bucket == "hour" else DAY
    first = since - since % step
    if (until - first) / step > MAX_POINTS:
        raise QueryError(f"That is more than {MAX_POINTS} points: ask for a shorter range or a larger bucket.")
    sums = _collect(conn, filters, since, until, bucket=step)
    points = [{"t": t, **_metrics(sums.get(t))} for t in range(first, until, step)]
    return {"bucket": bucket, "since": since, "until": until, "data": points}


def breakdown(conn: sqlite3.Connection, filters: Filters, by: str, *, now: float, limit: int = 100
              ) -> JSONObject:
    """Usage per provider, model, group, client or endpoint, most requests first."""
    since, until = hour_range(filters, now)
    ranked = sorted(_collect(conn, filters, since, until, by=by).items(), key=lambda kv: (-kv[1][0], kv[0]))
    rows = [{"key": k or None, **_metrics(v)} for k, v in ranked[:limit]]
    return {"by": by, "since": since, "until": until, "data": rows, "truncated": len(ranked) > limit}


# -- the request log ---------------------------------------------------------------------------


def _windows(conn: sqlite3.Connection, filters: Filters, errors_only: bool, below: int | None
             ) -> list[tuple[int, int]]:
    """Id ranges that hold every row the filters can match, newest first (from the rollup)."""
    since = int(filters.since // HOUR) * HOUR if filters.since is not None else 0
    until = -int(-filters.until // HOUR) * HOUR if filters.until is not None else 1 << 40
    where, args = _series_where(filters, _level(filters))
    errors = " AND u.errors > 0" if errors_only else ""
    ranges = []
    for table, low, high in _pieces(since, until):
        sql = (f"SELECT min(u.min_id), max(u.max_id) FROM {table} u WHERE u.series IN (SELECT s.id "
               f"FROM usage_series s WHERE {where}) AND u.t >= ? AND u.t < ?{errors} GROUP BY u.t")
        ranges += [(lo, hi if below is None else min(hi, below - 1))
                   for lo, hi in conn.execute(sql, (*args, low, high)) if below is None or lo < below]
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + _WINDOW_GAP:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in reversed(merged)]


def _log_row(row: Sequence[Any]) -> JSONObject:
    out = dict(zip(("id", *LOG_COLUMNS), row, strict=True))
    for name in _JSON_COLUMNS:
        if out[name]:
            try:
                out[name] = orjson.loads(out[name])
            except orjson.JSONDecodeError:
                pass  # an older row's free text: answered as stored
    return out


def list_logs(conn: sqlite3.Connection, filters: Filters, *, status: tuple[int, int] | None = None,
              request_id: str | None = None, cursor: int | None = None, limit: int = 50) -> JSONObject:
    """A page of log rows, newest (highest id) first; ``status`` is a [low, high) range of codes.

    ``next_cursor`` continues after the page's last row, so pages never shift as rows arrive.
    """
    where: list[str] = []
    args: list[object] = []
    if filters.since is not None:
        where.append("ts >= ?")
        args.append(filters.since)
    if filters.until is not None:
        where.append("ts < ?")
        args.append(filters.until)
    for dim, value in filters.dimensions().items():
        where.append(f"{_LOG_DIMS[dim]} = ?")
        args.append(value)
    if status is not None:
        where.append("status >= ? AND status < ?")
        args += status
    if request_id is not None:
        where.append("request_id = ?")
        args.append(request_id)
    if cursor is not None:
        where.append("id < ?")
        args.append(cursor)
    narrowed = request_id is None and bool(filters.dimensions() or filters.since is not None
                                           or filters.until is not None)
    windows = _windows(conn, filters, status is not None and status[0] >= 400, cursor) if narrowed else [_EVERY_ID]
    sql = f"{_LOG_SELECT} WHERE {' AND '.join([*where, 'id BETWEEN ? AND ?'])} ORDER BY id DESC LIMIT ?"
    found: list[Any] = []
    for window in windows:
        found += conn.execute(sql, (*args, *window, limit + 1 - len(found))).fetchall()
        if len(found) > limit:
            break
    page = [_log_row(r) for r in found[:limit]]
    more = len(found) > limit
    return {"data": page, "has_more": more, "next_cursor": str(page[-1]["id"]) if more else None}


class UsageStore:
    """The usage queries on read connections of their own, pooled so that panels load in parallel.

    Made on the event loop (nothing is opened there); every method blocks, so call it in a thread.
    """

    def __init__(self, path: str | Path, *, pool: int = 4) -> None:
        self.path = str(path)
        self.pool = pool
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schema_checked = False

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            if not self._schema_checked:  # the admin API may be asked before the first request is logged
                open_database(self.path).close()
                self._schema_checked = True
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA busy_timeout = 5000")
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < self.pool:
                self._idle.append(conn)
                return
        conn.close()

    def summary(self, filters: Filters, *, now: float) -> JSONObject:
        with self._reading() as conn:
            return summary(conn, filters, now=now)

    def timeseries(self, filters: Filters, bucket: Literal["hour", "day"], *, now: float) -> JSONObject:
        with self._reading() as conn:
            return timeseries(conn, filters, bucket, now=now)

    def breakdown(self, filters: Filters, by: str, *, now: float, limit: int = 100) -> JSONObject:
        with self._reading() as conn:
            return breakdown(conn, filters, by, now=now, limit=limit)

    def logs(self, filters: Filters, *, status: tuple[int, int] | None = None, request_id: str | None = None,
             cursor: int | None = None, limit: int = 50) -> JSONObject:
        with self._reading() as conn:
            return list_logs(conn, filters, status=status, request_id=request_id, cursor=cursor, limit=limit)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
