"""Circuit breakers: unit behaviour with a fake clock, and the acceptance path end to end —
one dead deployment among three, every request still succeeds, its breaker opens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from conftest import CLIENT_KEY, free_port

from llm_proxy.core.config import BreakerConfig
from llm_proxy.core.errors import ProxyError
from llm_proxy.routing.breaker import Breaker
from llm_proxy.routing.pipeline import classify
from llm_proxy.testing.mock_upstream import MockUpstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: Any) -> Breaker:
    config = BreakerConfig(**{"failures": 3, "transient_failures": 4, "window": 10.0, "cooldown": 5.0, **settings})
    return Breaker(config, clock, ("p", "m"))


def feed(b: Breaker, status: int, code: str | None = None) -> None:
    """One attempt's answer, classified as the pipeline classifies it."""
    b.record("ok" if status < 400 else classify(ProxyError(status, "upstream said no", code=code))[1])


def test_opens_after_failures_within_the_window_only() -> None:
    clock = Clock()
    b = breaker(clock)
    feed(b, 500)
    clock.now += 11  # outside the window: forgotten
    feed(b, 500)
    feed(b, 504, "upstream_timeout")
    assert b.state == "closed" and b.allow()
    feed(b, 502, "upstream_unreachable")  # the gateway could not connect: a hard failure
    assert b.state == "open" and not b.allow()


def test_transient_overloads_have_their_own_threshold() -> None:
    clock = Clock()
    b = breaker(clock)
    for status in (503, 529, 502):  # the upstream's own 502/503/529: overloaded, passes by itself
        feed(b, status)
    feed(b, 500)
    assert b.state == "closed"  # 3 transient (of 4) and 1 failure (of 3) in the window
    feed(b, 503)
    assert b.state == "open"


def test_half_open_probe_closes_or_reopens_with_doubled_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        feed(b, 500)
    clock.now += 5
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # one probe at a time
    feed(b, 500)
    assert b.state == "open" and b.retry_at == clock.now + 10  # cooldown doubled
    clock.now += 10
    assert b.allow()
    feed(b, 200)
    assert b.state == "closed" and b.allow()


def test_rate_limits_and_client_errors_never_trip_auth_failures_do() -> None:
    clock = Clock()
    b = breaker(clock)
    for status in (429, 429, 429, 400, 404, 413):
        feed(b, status)
    assert b.state == "closed"
    feed(b, 401)
    assert b.state == "open" and b.retry_at == clock.now + 300  # a bad key: the long cooldown


def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        feed(b, 500)
    clock.now += 5
    assert b.allow()
    b.release()
    assert b.allow()


def test_one_dead_deployment_of_three(make_gateway: Any, mock: MockUpstream) -> None:
    timeouts = {"connect": 1, "read": 5, "total": 10}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = {
        name: {"type": "openai", "base_url": url, "api_key": f"sk-{name}-upstream", "models": ["gpt-4o"],
               "timeouts": timeouts}
        for name, url in (("dead", dead), ("alive", mock.base_url_v1), ("spare", mock.base_url_v1))
    }
    gw = make_gateway(providers=providers)

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30,
                                     headers={"authorization": f"Bearer {CLIENT_KEY}"}) as client:
            async def one(i: int) -> int:
                r = await client.post("/v1/chat/completions",
                                      json={"model": "gpt-4o", "messages": [{"role": "user", "content": f"q{i}"}]})
                return r.status_code
            statuses = []
            for start in range(0, 300, 50):  # 300 requests, 50 at a time
                statuses += await asyncio.gather(*(one(i) for i in range(start, start + 50)))
            return statuses

    assert asyncio.run(run()) == [200] * 300
    health = httpx.get(gw.url + "/health").json()
    assert health["providers"]["dead"]["breakers"] == {"gpt-4o": "open"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'llm_proxy_breaker_state{model="gpt-4o",provider="dead"} 2.0' in metrics
    rows = gw.rows(300)
    tried_dead = sum(any(a.get("provider") == "dead" for a in json.loads(r["attempts"] or "[]")) for r in rows)
    assert tried_dead < 100  # once open, the dead deployment is skipped (probes aside)
    assert all(r["status"] == 200 and r["provider"] == "alive" for r in rows)
