"""The request-log row: one declaration (``LogRow``) fixes the columns, their order and types.

The table, the INSERT, the rollup's picks and ``finish_request`` all follow it; these tests
fail when any of them drifts from it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from llm_proxy.core.context import ClientIdentity, Deployment, RequestContext, Usage
from llm_proxy.runtime.request_end import finish_request
from llm_proxy.storage.request_log import LOG_COLUMNS, LogRow, UsageRollup, open_database, write_rows

SQL_TYPE = {int: "INTEGER", float: "REAL", str: "TEXT"}  # as sqlite_utils declares them


def sample_row() -> LogRow:
    """A row whose every field holds a value no other field holds."""
    values: dict[str, Any] = {}
    for i, (name, kind) in enumerate(LOG_COLUMNS.items()):
        values[name] = {int: 1000 + i, float: 1000.5 + i, str: f"{name}-value"}[kind]
    values["status"] = 503  # an error: counted as one by the rollup, like any other
    return LogRow(**values)


def test_fresh_table_has_logrow_columns_in_order(tmp_path: Path) -> None:
    db = open_database(tmp_path / "log.db")
    info = db.conn.execute("PRAGMA table_info(request_logs)").fetchall()
    db.close()
    assert [c[1] for c in info] == ["id", *LogRow._fields]
    assert [c[2] for c in info[1:]] == [SQL_TYPE[kind] for kind in LOG_COLUMNS.values()]


def test_log_columns_follow_logrow() -> None:
    assert tuple(LOG_COLUMNS) == LogRow._fields
    assert isinstance(sample_row(), tuple)  # what executemany is handed, with no conversion


def test_each_field_lands_in_its_own_column(tmp_path: Path) -> None:
    db = open_database(tmp_path / "log.db")
    conn = db.conn
    row = sample_row()
    assert write_rows(conn, UsageRollup(conn), [row]) is True
    conn.row_factory = sqlite3.Row
    stored = dict(conn.execute("SELECT * FROM request_logs").fetchone())
    totals = conn.execute("SELECT requests, errors, prompt_tokens, cost_usd FROM usage_hourly "
                          "JOIN usage_series ON usage_series.id = series WHERE level = 0").fetchone()
    db.close()
    assert stored == {"id": 1, **row._asdict()}
    assert tuple(totals) == (1, 1, row.prompt_tokens, row.cost_usd)  # the rollup picks by name too


class _Writer:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def submit(self, row: Any) -> bool:
        self.rows.append(row)
        return True


@pytest.mark.parametrize("routed", [True, False])
def test_finish_request_submits_a_named_row(routed: bool) -> None:
    writer = _Writer()
    runtime = SimpleNamespace(request_log=SimpleNamespace(known_labels=frozenset({"gpt-4o"}), writer=writer))
    ctx = RequestContext(request_id="req-row-1", runtime=cast(Any, runtime), endpoint="chat.completions")
    ctx.client = ClientIdentity(key_id="key-7", name="team")
    ctx.requested_model, ctx.model, ctx.group, ctx.stream = "fast", "gpt-4o", "fast", True
    ctx.status, ctx.finish_reason, ctx.upstream_request_id, ctx.cost = 200, "stop", "up-9", 0.25
    ctx.usage = Usage(prompt_tokens=11, completion_tokens=22, reasoning_tokens=3, cached_tokens=4)
    ctx.route = ["alias:fast"]
    ctx.metadata.update(attempts=[{"provider": "openai"}], tags={"team": "a"}, usage_estimated=True)
    ctx.first_token_at, ctx.finished_at, ctx.overhead_ms = ctx.started + 0.01, ctx.started + 0.02, 0.5
    if routed:
        ctx.deployment = Deployment(provider="openai", model="gpt-4o-2024")

    finish_request(ctx)

    [row] = writer.rows
    assert type(row) is LogRow
    assert row._replace(ts=0.0, latency_ms=0.0, ttft_ms=0.0) == LogRow(
        ts=0.0, request_id="req-row-1", endpoint="chat.completions", client_key_id="key-7",
        requested_model="fast", resolved_model="gpt-4o", provider="openai" if routed else None,
        upstream_model="gpt-4o-2024" if routed else None, status=200, error_type=None, error_message=None,
        stream=1, prompt_tokens=11, completion_tokens=22, reasoning_tokens=3, cached_tokens=4, usage_estimated=1,
        cost_usd=0.25, latency_ms=0.0, ttft_ms=0.0, overhead_ms=0.5, upstream_request_id="up-9",
        finish_reason="stop", route='["alias:fast"]', attempts='[{"provider":"openai"}]', group_name="fast",
        tags='{"team":"a"}',
    )
    assert row.ts == ctx.started_wall
    assert row.latency_ms == pytest.approx(20.0) and row.ttft_ms == pytest.approx(10.0)
