"""Usage API timings on a generated request log (default 1,000,000 rows over 30 days).

    .venv/bin/python bench/usage_bench.py [--rows 1000000] [--repeats 5] [--db PATH] [--rebuild]

Generates the log into a SQLite file through the writer's own code path (``write_rows``:
insert + rollup in one transaction, 20,000 rows a transaction), or with ``--rebuild`` writes
the rows alone, as a version without the rollup would have, and times the catch-up. Then
prints the best of ``--repeats`` runs of every usage query, and what the rollup costs the
writer per row. tests/test_usage_api.py imports ``generate`` and ``QUERIES`` from here, so
the test times the same data and queries.
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llm_proxy.storage.request_log import (  # noqa: E402
    DAY,
    LOG_COLUMNS,
    LogRow,
    UsageRollup,
    open_database,
    write_rows,
)
from llm_proxy.storage.usage_queries import Filters, breakdown, list_logs, summary, timeseries  # noqa: E402

# The log ends at a ragged time (not on an hour) so that queries read hourly edges as well as whole days.
END = datetime(2026, 11, 1, 13, 20, tzinfo=UTC).timestamp()
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"),
          ("anthropic", "claude-sonnet-4"), ("anthropic", "claude-haiku-4"), ("deepseek", "deepseek-chat"),
          ("deepseek", "deepseek-reasoner"), ("gemini", "gemini-2.5-flash"), ("gemini", "gemini-2.5-pro"),
          ("ollama", "llama3.1")]
GROUPS = {"fast-flow": [1, 5, 7], "heavy-logic": [2, 3, 8]}
ENDPOINTS = ["chat.completions"] * 8 + ["messages", "responses", "embeddings"]
ERRORS = [400, 401, 429, 429, 500, 502, 499]
CLIENTS = 200
RARE_MODEL = "o1-preview"  # ~40 rows in the whole log: the listing's needle in a haystack
INSERT = f"INSERT INTO request_logs ({', '.join(LOG_COLUMNS)}) VALUES ({', '.join('?' * len(LOG_COLUMNS))})"


def synthetic_rows(n: int, days: int = 30, seed: int = 7) -> list[LogRow]:
    """Log tuples in ts order. Each of 200 clients (Zipf-weighted) has 1-4 habits (endpoint, model or group).

    One 64-bit draw per row, sliced, and pools of log-normal latencies and token counts: the
    generator must not dominate the test that uses it.
    """
    rnd = random.Random(seed)
    habits = [[(rnd.choice(ENDPOINTS), rnd.choice(["", "", "", "fast-flow", "heavy-logic"]), rnd.randrange(len(MODELS)))
               for _ in range(rnd.choice([1, 1, 2, 2, 3, 4]))] for _ in range(CLIENTS)]
    clients = rnd.choices(range(CLIENTS), [1 / (i + 1) ** 1.1 for i in range(CLIENTS)], k=n)
    served = [(round(rnd.lognormvariate(7.1, 0.8), 3), int(rnd.lognormvariate(6.5, 1.0)),
               int(rnd.lognormvariate(5.5, 1.0))) for _ in range(4096)]
    failed = [round(rnd.lognormvariate(4.0, 1.5), 3) for _ in range(4096)]
    rare = set(rnd.sample(range(n), 40))
    start, step = END - days * DAY, days * DAY / n
    rows = []
    for i, c in enumerate(clients):
        bits = rnd.getrandbits(64)
        habit = habits[c]
        endpoint, group, m = habit[(bits & 0xFF) % len(habit)]
        if group:
            m = GROUPS[group][((bits >> 8) & 0xFF) % 3]
        provider, model = ("openai", RARE_MODEL) if i in rare else MODELS[m]
        ts = start + (i + ((bits >> 46) & 0x3FF) / 1024) * step
        if (bits >> 16) & 0x3FF >= 41:  # ~96 % answered
            latency, prompt, completion = served[(bits >> 34) & 0xFFF]
            rows.append(LogRow(
                ts=ts, request_id=f"req_{seed:02x}{i:010x}", endpoint=endpoint, client_key_id=f"key_{c:04d}",
                requested_model=model, resolved_model=model, provider=provider, upstream_model=model, status=200,
                error_type=None, error_message=None, stream=i & 1, prompt_tokens=prompt,
                completion_tokens=completion,
                reasoning_tokens=completion // 2 if model == "deepseek-reasoner" else 0,
                cached_tokens=prompt // 4 if i % 5 == 0 else 0, usage_estimated=0,
                cost_usd=prompt * 2.5e-6 + completion * 1e-5, latency_ms=latency, ttft_ms=round(latency / 3, 3),
                overhead_ms=0.4, upstream_request_id=None, finish_reason="stop", route=None, attempts=None,
                group_name=group or None, tags=None,
            ))
            continue
        status = ERRORS[((bits >> 26) & 0xFF) % len(ERRORS)]
        known = status != 401  # an unauthenticated request has no client and was never routed
        routed = known and not (group and status == 500)  # a group that found no deployment: no model
        rows.append(LogRow(
            ts=ts, request_id=f"req_{seed:02x}{i:010x}", endpoint=endpoint,
            client_key_id=f"key_{c:04d}" if known else None, requested_model=group or model,
            resolved_model=model if routed else None, provider=provider if routed else None,
            upstream_model=model if routed else None, status=status, error_type="upstream_error",
            error_message=None, stream=i & 1, prompt_tokens=None, completion_tokens=None, reasoning_tokens=None,
            cached_tokens=None, usage_estimated=0, cost_usd=None, latency_ms=failed[(bits >> 34) & 0xFFF],
            ttft_ms=None, overhead_ms=0.4, upstream_request_id=None, finish_reason=None, route=None,
            attempts=None, group_name=(group or None) if known else None, tags=None,
        ))
    return rows


def generate(path: Path, rows: int = 1_000_000, days: int = 30, seed: int = 7, rebuild: bool = False,
             chunk: int = 20_000) -> float:
    """Write a synthetic log to ``path`` (a new file); returns the seconds the catch-up took (``rebuild``)."""
    db = open_database(path)
    conn = db.conn
    conn.execute("PRAGMA synchronous=OFF")  # a generated file: durability is not the point
    rollup = UsageRollup(conn)
    data = synthetic_rows(rows, days, seed)
    for i in range(0, len(data), chunk):
        batch = data[i:i + chunk]
        if rebuild:
            with conn:
                conn.executemany(INSERT, batch)
        elif not write_rows(conn, rollup, batch):
            raise RuntimeError("the rollup fell behind the log while generating it")
    started = time.perf_counter()
    while rebuild and rollup.catch_up(50_000):
        pass
    took = time.perf_counter() - started
    conn.execute("PRAGMA optimize")
    db.close()
    return took


def _filtered(**kw: Any) -> Filters:
    return Filters(since=END - 30 * DAY, until=END, **kw)


Query = Callable[[sqlite3.Connection], Any]
QUERIES: list[tuple[str, Query]] = [
    ("summary, 30 days", lambda c: summary(c, _filtered(), now=END)),
    ("summary, provider=anthropic", lambda c: summary(c, _filtered(provider="anthropic"), now=END)),
    ("summary, client + model", lambda c: summary(c, _filtered(client="key_0003", model="gpt-4.1"), now=END)),
    ("timeseries by hour, 30 days", lambda c: timeseries(c, _filtered(), "hour", now=END)),
    ("timeseries by hour, endpoint=chat", lambda c: timeseries(c, _filtered(endpoint="chat.completions"), "hour",
                                                               now=END)),
    ("timeseries by hour, client", lambda c: timeseries(c, _filtered(client="key_0000"), "hour", now=END)),
    ("timeseries by day, 30 days", lambda c: timeseries(c, _filtered(), "day", now=END)),
    ("timeseries by day, group=fast-flow", lambda c: timeseries(c, _filtered(group="fast-flow"), "day", now=END)),
    ("breakdown by provider", lambda c: breakdown(c, _filtered(), "provider", now=END)),
    ("breakdown by model", lambda c: breakdown(c, _filtered(), "model", now=END)),
    ("breakdown by group", lambda c: breakdown(c, _filtered(), "group", now=END)),
    ("breakdown by client", lambda c: breakdown(c, _filtered(), "client", now=END)),
    ("breakdown by client, provider=openai", lambda c: breakdown(c, _filtered(provider="openai"), "client", now=END)),
    ("breakdown by model, client", lambda c: breakdown(c, _filtered(client="key_0001"), "model", now=END)),
    ("logs, first page", lambda c: list_logs(c, Filters())),
    ("logs, provider + 5xx, deep page", lambda c: list_logs(c, Filters(provider="anthropic"), status=(500, 600),
                                                            cursor=500_000)),
    ("logs, client + since, deep page", lambda c: list_logs(c, Filters(client="key_0150", since=END - 20 * DAY),
                                                            cursor=900_000)),
    ("logs, rare model, deep page", lambda c: list_logs(c, Filters(model=RARE_MODEL), cursor=600_000)),
    ("logs, status=418 (no match)", lambda c: list_logs(c, Filters(), status=(418, 419))),
    ("logs, request_id", lambda c: list_logs(c, Filters(), request_id="req_07000007a120")),
]


def best_of(conn: sqlite3.Connection, query: Query, repeats: int = 3) -> tuple[float, Any]:
    """Best-of-``repeats`` milliseconds of one query (each run in its own read transaction), and its answer."""
    best, answer = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        conn.execute("BEGIN")
        answer = query(conn)
        conn.execute("COMMIT")
        best = min(best, time.perf_counter() - started)
    return best * 1000, answer


def time_queries(path: Path, repeats: int = 3) -> list[tuple[str, float]]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return [(name, best_of(conn, query, repeats)[0]) for name, query in QUERIES]
    finally:
        conn.close()


def percentile_errors(path: Path) -> list[tuple[str, int, float, float]]:
    """Relative error of the histogram's p50/p95 against exact (nearest-rank) percentiles, per slice."""
    conn = sqlite3.connect(path)
    out = []
    try:
        slices: list[tuple[str, str, dict[str, str]]] = [
            ("all", "1", {}),
            ("provider=anthropic", "provider = 'anthropic'", {"provider": "anthropic"}),
            ("client=key_0042", "client_key_id = 'key_0042'", {"client": "key_0042"}),
            (f"model={RARE_MODEL}", f"resolved_model = '{RARE_MODEL}'", {"model": RARE_MODEL}),
        ]
        for name, where, dims in slices:
            latency = summary(conn, Filters(since=END - 31 * DAY, until=END, **dims), now=END)["latency_ms"]
            n = conn.execute(f"SELECT count(*) FROM request_logs WHERE {where}").fetchone()[0]
            errors = []
            for q, key in ((0.5, "p50"), (0.95, "p95")):
                exact = conn.execute(f"SELECT latency_ms FROM request_logs WHERE {where} ORDER BY latency_ms "
                                     "LIMIT 1 OFFSET ?", (max(0, math.ceil(q * n) - 1),)).fetchone()[0]
                errors.append(abs(latency[key] / exact - 1) * 100)
            out.append((name, n, errors[0], errors[1]))
    finally:
        conn.close()
    return out


def writer_cost(rows: int = 60_000, batch: int = 300) -> dict[str, tuple[float, float]]:
    """µs per row to write the log in the writer's batches, without and with the rollup.

    Two shapes: one series (one client, one model: the throughput benchmark's traffic) and
    the generated mix (~140 series in every batch of 300), the rollup's worst realistic case.
    """
    mixed = synthetic_rows(rows, 1, seed=11)
    same = {"endpoint": "chat.completions", "client_key_id": "key_0001", "resolved_model": "gpt-4o",
            "provider": "openai", "group_name": None}
    one = [r._replace(**same) for r in mixed]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape, data in (("one series", one), ("mixed", mixed)):
            figures = []
            for rolled in (False, True):
                db = open_database(Path(tmp) / f"{shape}{rolled}.db")
                conn, rollup = db.conn, UsageRollup(db.conn)
                started = time.perf_counter()
                for i in range(0, rows, batch):
                    if rolled:
                        write_rows(conn, rollup, data[i:i + batch])
                    else:
                        with conn:
                            conn.executemany(INSERT, data[i:i + batch])
                figures.append((time.perf_counter() - started) / rows * 1e6)
                db.close()
            out[shape] = (figures[0], figures[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, help="keep the generated database here (default: a temporary file)")
    parser.add_argument("--rebuild", action="store_true", help="write rows only, then time the rollup's catch-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "usage.db"
        if path.exists():
            sys.exit(f"{path} exists: give a new path")
        started = time.perf_counter()
        catch_up = generate(path, args.rows, rebuild=args.rebuild)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f} s"
              + (f" (catch-up of the rollup: {catch_up:.1f} s)" if args.rebuild else ""))
        conn = sqlite3.connect(path)
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("usage_series", "usage_hourly", "usage_daily")}
        conn.close()
        print(f"rollup rows: {counts}, file {path.stat().st_size / 1e6:.0f} MB\n")
        print(f"| query | best of {args.repeats}, ms |\n|---|---|")
        for name, ms in time_queries(path, args.repeats):
            print(f"| {name} | {ms:.1f} |")
        print("\n| latency slice | rows | p50 error % | p95 error % |\n|---|---|---|---|")
        for name, n, p50, p95 in percentile_errors(path):
            print(f"| {name} | {n:,} | {p50:.1f} | {p95:.1f} |")
    print("\n| writer, batches of 300 | µs/row, log only | µs/row, log + rollup |\n|---|---|---|")
    for shape, (plain, rolled) in writer_cost().items():
        print(f"| {shape} | {plain:.1f} | {rolled:.1f} |")


if __name__ == "__main__":
    main()
