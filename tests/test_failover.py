"""Failover before the first byte: a model served by several providers survives one failing,
and every attempt is in the request log. A client error is never retried elsewhere."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import CLIENT_KEY, Gateway, free_port

from llm_proxy.storage.request_log import LOG_COLUMNS, open_database
from llm_proxy.testing.mock_upstream import MockUpstream


def two_deployments(mock: MockUpstream, first_url: str) -> dict[str, Any]:
    """``gpt-4o`` listed by a first provider at ``first_url`` and a second at the mock."""
    timeouts = {"connect": 1, "read": 5, "total": 10}
    return {
        "first": {"type": "openai", "base_url": first_url, "api_key": "sk-first-upstream", "models": ["gpt-4o"],
                  "timeouts": timeouts},
        "second": {"type": "openai", "base_url": mock.base_url_v1, "api_key": "sk-second-upstream",
                   "models": ["gpt-4o"], "timeouts": timeouts},
    }


def sdk(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def test_dead_deployment_fails_over_non_streaming_and_streaming(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers=two_deployments(mock, f"http://127.0.0.1:{free_port()}/v1"))
    reply = sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the mock upstream."
    stream = sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the mock upstream."
    rows = gw.rows(2)
    for row in rows:
        assert (row["status"], row["provider"]) == (200, "second")
        attempts = json.loads(row["attempts"])
        assert [(a["provider"], a["status"]) for a in attempts] == [("first", 502), ("second", 200)]
        assert attempts[0]["error"] == "upstream_unreachable"
    assert gw.runtime.upstreams.providers["first"].last_error  # /health shows why


def test_client_error_is_not_failed_over(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers=two_deployments(mock, mock.base_url_v1))
    with pytest.raises(openai.BadRequestError):
        sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x\n#mock status=400"}])
    assert len(mock.requests) == 1  # the second deployment was never asked
    (row,) = gw.rows(1)
    assert row["status"] == 400 and [a["status"] for a in json.loads(row["attempts"])] == [400]


def test_every_deployment_failing_returns_the_last_error(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers=two_deployments(mock, mock.base_url_v1))
    with pytest.raises(openai.RateLimitError):
        sdk(gw).chat.completions.create(model="gpt-4o",
                                        messages=[{"role": "user", "content": "x\n#mock status=429 retry_after=30"}])
    assert len(mock.requests) == 2  # both tried, in order
    (row,) = gw.rows(1)
    assert row["status"] == 429 and [a["provider"] for a in json.loads(row["attempts"])] == ["first", "second"]


def test_single_deployment_records_no_attempts(gateway: Gateway) -> None:
    sdk(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    (row,) = gateway.rows(1)
    assert row["attempts"] is None


def test_older_database_gains_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE request_logs (id INTEGER PRIMARY KEY, ts FLOAT, request_id TEXT)")
    conn.commit()
    conn.close()
    open_database(path).close()
    columns = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(request_logs)")}
    assert set(LOG_COLUMNS) <= columns
