"""Budgets: checked before the call, charged the exact catalog price after it, kept across restarts.

Expected prices are computed here from the catalog's per-1M prices and the mock's documented
token rules, as exact fractions; the gateway must match them to the last bit, and a key's
spend must equal the (exactly rounded) sum of its log rows' ``cost_usd``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import MASTER_KEY, Gateway, gateway_config

from llm_proxy.access.spend_ledger import SpendLedger
from llm_proxy.core.catalog import Catalog
from llm_proxy.core.context import ClientIdentity
from llm_proxy.core.errors import ProxyError
from llm_proxy.testing.mock_upstream import MockUpstream
from llm_proxy.upstream.transport import AiohttpTransport

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
CATALOG = Catalog.load()


def expected_cost(model: str, provider: str, prompt: int, completion: int, cached: int = 0,
                  reasoning: int = 0) -> float:
    """USD from the catalog's per-1M prices, computed exactly and rounded once."""
    info = CATALOG.pricing(model, provider)
    assert info is not None and info.price is not None
    price = info.price

    def per_token(usd: float | None, fallback: float | None) -> Fraction:
        value = usd if usd is not None else fallback
        assert value is not None
        return Fraction(repr(value)) / 1_000_000

    total = ((prompt - cached) * per_token(price.input, None)
             + cached * per_token(price.cache_read, price.input)
             + (completion - reasoning) * per_token(price.output, None)
             + reasoning * per_token(price.reasoning, price.output))
    return float(total)


def new_key(gw: Gateway, **fields: Any) -> tuple[str, dict[str, Any]]:
    r = httpx.post(gw.url + "/api/keys", json={"name": "budgeted", **fields}, headers=ADMIN, timeout=10)
    assert r.status_code == 201, r.text
    data = r.json()
    return data.pop("key"), data


def spend(gw: Gateway, key_id: int) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/api/keys/{key_id}/spend", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def sdk(gw: Gateway, key: str, retries: int = 0) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=retries, timeout=10)
    gw.clients.append(client)
    return client


def logged_costs(gw: Gateway, log_id: str, expected_rows: int) -> list[float]:
    rows = [r for r in gw.rows(expected_rows) if r["client_key_id"] == log_id]
    return [r["cost_usd"] for r in rows if r["cost_usd"] is not None]


def test_a_streamed_response_with_cached_tokens_is_charged_the_exact_catalog_price(gateway: Gateway) -> None:
    key, info = new_key(gateway, budget_total_usd=10)
    client = sdk(gateway, key)
    text = "summarise the cached document please\n#mock cached=4 chunks=7"
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    prompt = 3 + len(text.split())
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, 7)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4

    expected = expected_cost("gpt-4o", "openai", prompt, 7, cached=4)
    assert expected != expected_cost("gpt-4o", "openai", prompt, 7)  # the cache discount matters
    [row] = gateway.rows(1)
    assert row["cost_usd"] == expected
    charged = spend(gateway, info["id"])
    assert charged["spend_usd"] == {"day": expected, "month": expected, "total": expected}
    assert charged["remaining_usd"]["total"] == 10 - expected
    assert charged["in_flight_usd"] == 0


def test_reasoning_tokens_are_charged(gateway: Gateway) -> None:
    key, info = new_key(gateway, budget_day_usd=1)
    reply = sdk(gateway, key).chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": "prove it"}])
    assert reply.usage is not None
    details = reply.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 3
    expected = expected_cost("deepseek-reasoner", "deepseek", 3 + 2, 5 + 3, reasoning=3)
    assert gateway.rows(1)[0]["cost_usd"] == expected
    assert spend(gateway, info["id"])["spend_usd"]["day"] == expected


def test_a_stream_the_client_leaves_is_charged_for_what_was_delivered(mock: MockUpstream, gateway: Gateway) -> None:
    key, info = new_key(gateway, budget_month_usd=5)
    payload = {"model": "gpt-4o-mini", "stream": True,
               "messages": [{"role": "user", "content": "a long story\n#mock chunks=200 chunk_ms=20"}]}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", gateway.url + "/v1/chat/completions", json=payload,
                           headers={"Authorization": f"Bearer {key}"}) as r:
            received = b""
            for piece in r.iter_raw():
                received += piece
                if received.count(b"\n\n") >= 4:
                    break
    assert mock.wait_for(lambda: mock.streams_aborted_by_client == 1)
    [row] = gateway.rows(1)
    assert row["status"] == 499 and row["usage_estimated"] == 1
    assert 0 < row["completion_tokens"] < 200
    expected = expected_cost("gpt-4o-mini", "openai", row["prompt_tokens"], row["completion_tokens"])
    assert row["cost_usd"] == expected > 0
    assert spend(gateway, info["id"])["spend_usd"]["month"] == expected


def test_spend_equals_the_log_and_an_exhausted_key_is_refused_without_sdk_retries(gateway: Gateway) -> None:
    one = expected_cost("gpt-4o", "openai", 3 + 2, 5)
    key, info = new_key(gateway, budget_total_usd=one * 2.5)
    client = sdk(gateway, key, retries=3)
    for _ in range(3):  # 0, 1 and 2 requests' worth spent: each still under 2.5
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
    assert err.value.status_code == 429
    assert err.value.code == "insufficient_quota"
    assert err.value.response.json()["error"]["type"] == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert "total budget" in err.value.message

    rows = gateway.rows(4)
    assert [r["status"] for r in rows] == [200, 200, 200, 429]  # the SDK did not retry the refusal
    costs = logged_costs(gateway, info["log_key_id"], 4)
    assert costs == [one] * 3
    assert spend(gateway, info["id"])["spend_usd"]["total"] == math.fsum(costs)


def test_a_daily_budget_refusal_says_when_it_resets(gateway: Gateway) -> None:
    key, _ = new_key(gateway, budget_day_usd=0)
    r = httpx.post(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    midnight = dt.datetime.combine(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert abs(int(r.headers["retry-after"]) - (midnight - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert r.headers["x-should-retry"] == "false"


async def burst(url: str, key: str, count: int) -> list[int]:
    payload = {"model": "gpt-4o", "max_tokens": 1000,
               "messages": [{"role": "user", "content": "hi\n#mock latency_ms=300"}]}
    async with httpx.AsyncClient(transport=AiohttpTransport(limit=count + 10), timeout=30) as client:
        responses = await asyncio.gather(*(
            client.post(url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})
            for _ in range(count)
        ))
    return [r.status_code for r in responses]


def test_requests_in_flight_hold_their_estimated_cost(gateway: Gateway) -> None:
    # Each request could cost up to ~$0.01 (1000 output tokens of gpt-4o): with $0.015 left,
    # two may start and the rest must wait for them rather than all slip in under the budget.
    key, info = new_key(gateway, budget_total_usd=0.015)
    statuses = asyncio.run(burst(gateway.url, key, 20))
    assert sorted(statuses) == [200] * 2 + [429] * 18
    assert spend(gateway, info["id"])["in_flight_usd"] == 0
    assert spend(gateway, info["id"])["spend_usd"]["total"] < 0.001  # what they really cost


def test_spend_survives_a_restart(mock: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    first = Gateway(gateway_config(mock.base_url_v1, db)).start()
    try:
        one = expected_cost("gpt-4o", "openai", 3 + 2, 5)
        key, info = new_key(first, budget_total_usd=one * 1.5)
        client = sdk(first, key)
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
        before = spend(first, info["id"])["spend_usd"]
    finally:
        first.stop()
    assert before["total"] == math.fsum([one, one])

    second = Gateway(gateway_config(mock.base_url_v1, db)).start()
    try:
        assert spend(second, info["id"])["spend_usd"] == before
        with pytest.raises(openai.RateLimitError) as err:
            sdk(second, key).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
        assert err.value.code == "insufficient_quota"
    finally:
        second.stop()


class Clock:
    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def test_day_and_month_roll_over_in_utc(tmp_path: Path) -> None:
    clock = Clock(dt.datetime(2026, 1, 31, 23, 0, tzinfo=dt.UTC))
    ledger = SpendLedger(tmp_path / "none.db", clock)
    ledger.load()
    key = ClientIdentity("dbkey_1", "k", metered=True, budget_day_usd=1.0, budget_month_usd=1.5)
    ledger.settle("dbkey_1", clock.now, 0.0, 0.6)
    ledger.check(key)
    ledger.settle("dbkey_1", clock.now, 0.0, 0.4)
    with pytest.raises(ProxyError) as err:
        ledger.check(key)
    assert err.value.status == 429 and "daily" in err.value.message
    assert err.value.headers["retry-after"] == "3601"

    clock.now += 2 * 3600  # 1 February, 01:00 UTC: a new day and a new month
    assert ledger.spent("dbkey_1") == (0.0, 0.0, 1.0)
    ledger.check(key)
    ledger.settle("dbkey_1", clock.now - 7200, 0.0, 0.25)  # a request that started in January ends now
    assert ledger.spent("dbkey_1") == (0.0, 0.0, 1.25)

    ledger.reserve("dbkey_1", 1.5)  # one request in flight might cost the whole monthly budget
    with pytest.raises(ProxyError) as err:
        ledger.check(key)
    assert "in flight" in err.value.message and "x-should-retry" not in err.value.headers
    ledger.settle("dbkey_1", clock.now, 1.5, 0.1)
    assert ledger.reserved("dbkey_1") == 0.0
    assert ledger.spent("dbkey_1") == (0.1, 0.1, 1.35)


def test_sums_are_exact_in_any_order(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "none.db")
    ledger.load()
    costs = [0.1, 0.2, 0.3, 1e-9, 2.5e-6, 0.7225556697499999] * 50
    for cost in reversed(costs):
        ledger.settle("dbkey_9", 1.0e9, 0.0, cost)
    assert ledger.spent("dbkey_9", now=1.0e9)[2] == math.fsum(costs) != sum(costs)


def test_a_classifier_groups_selector_call_is_charged_to_the_key(make_gateway: Any) -> None:
    groups = {"smart": {"strategy": "classifier", "selector_model": "gpt-4o-mini",
                        "targets": ["gpt-4o-mini", "gpt-4o"]}}
    gw = make_gateway(groups=groups)
    key, info = new_key(gw, budget_total_usd=10.0)
    sdk(gw, key).chat.completions.create(model="smart", messages=[{"role": "user", "content": "hello there"}])
    rows = gw.rows(2)
    assert sorted(r["endpoint"] for r in rows) == ["chat.completions", "classifier"]
    costs = logged_costs(gw, info["log_key_id"], 2)
    assert len(costs) == 2 and all(c > 0 for c in costs)
    assert spend(gw, info["id"])["spend_usd"]["total"] == math.fsum(costs)
