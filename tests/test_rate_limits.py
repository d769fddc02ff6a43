"""Per-key rate limits: exact under concurrency, tokens reserved then reconciled, OpenAI's headers.

Against the real gateway under uvicorn; the windows themselves are also driven with a fake
clock, where 60 seconds can pass at once.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import openai
import pytest
from conftest import CLIENT_KEY, MASTER_KEY, Gateway

from llm_proxy.access.rate_windows import PERIOD, RateLimiter, duration
from llm_proxy.core.context import ClientIdentity
from llm_proxy.core.errors import ProxyError
from llm_proxy.testing.mock_upstream import MockUpstream
from llm_proxy.upstream.transport import AiohttpTransport

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


def new_key(gw: Gateway, **fields: Any) -> tuple[str, str]:
    r = httpx.post(gw.url + "/api/keys", json={"name": "limited", **fields}, headers=ADMIN, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["log_key_id"]


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def post(gw: Gateway, key: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=payload,
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)


def in_background(gw: Gateway, key: str, payload: dict[str, Any]) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(post(gw, key, payload)))
    thread.start()
    return thread, out


async def burst(url: str, key: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=AiohttpTransport(limit=count + 10), timeout=30) as client:
        return await asyncio.gather(*(
            client.post(url + "/v1/chat/completions", json=chat(f"request {i}"),
                        headers={"Authorization": f"Bearer {key}"})
            for i in range(count)
        ))


def test_200_concurrent_requests_against_50_rpm_admit_exactly_50(mock: MockUpstream, gateway: Gateway) -> None:
    key, log_id = new_key(gateway, rpm=50)
    responses = asyncio.run(burst(gateway.url, key, 200))

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (50, 150)
    assert len(mock.requests) == 50
    for r in refused:
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-limit-requests"] == "50"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(50))
    assert gateway.app.state.rate_limiter.requests_used(log_id) == 50
    rows = gateway.rows(200)
    assert sorted(r["status"] for r in rows) == [200] * 50 + [429] * 150


def test_the_openai_sdk_sees_429_with_headers_past_the_limit(gateway: Gateway) -> None:
    key, _ = new_key(gateway, rpm=2)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10)
    gateway.clients.append(client)
    for remaining in ("1", "0"):
        raw = client.chat.completions.with_raw_response.create(**chat())
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(**chat())
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    headers = err.value.response.headers
    assert int(headers["retry-after"]) >= 59 and int(headers["retry-after-ms"]) > 58_000
    assert "x-should-retry" not in headers  # transient: the SDK may retry it


def test_tokens_are_reserved_at_admission_and_reconciled_to_real_usage(
    mock: MockUpstream, gateway: Gateway
) -> None:
    key, log_id = new_key(gateway, tpm=100)
    limiter = gateway.app.state.rate_limiter

    too_big = post(gateway, key, chat(max_tokens=200))
    assert too_big.status_code == 429
    assert too_big.json()["error"]["type"] == "tokens"
    assert too_big.headers["x-should-retry"] == "false"  # can never fit: retrying is pointless
    assert "Request too large" in too_big.json()["error"]["message"]

    # A slow request holds its estimate: 23 characters // 4 + 4 per message, plus max_tokens.
    slow_text = "hi\n#mock latency_ms=500"
    thread, out = in_background(gateway, key, chat(slow_text, max_tokens=60))
    assert mock.wait_for(lambda: mock.in_flight == 1)
    assert limiter.tokens_used(log_id) == len(slow_text) // 4 + 4 + 60 == 69
    blocked = post(gateway, key, chat(max_tokens=60))  # 4 + 60 more would make 133 > 100
    assert blocked.status_code == 429
    assert blocked.json()["error"]["type"] == "tokens"
    assert blocked.headers["x-ratelimit-limit-tokens"] == "100"
    assert blocked.headers["x-ratelimit-remaining-tokens"] == "31"
    assert int(blocked.headers["retry-after"]) >= 1
    thread.join(10)
    assert out[0].status_code == 200

    # Reconciled: the mock's usage is 3 + 3 words prompt, 5 completion.
    real = out[0].json()["usage"]["total_tokens"]
    assert real == 11
    assert limiter.tokens_used(log_id) == 11
    allowed = post(gateway, key, chat(max_tokens=60))
    assert allowed.status_code == 200
    assert allowed.headers["x-ratelimit-remaining-tokens"] == str(100 - 11 - 64)
    assert limiter.tokens_used(log_id) == 11 + allowed.json()["usage"]["total_tokens"] == 11 + 9


def test_a_stream_is_reconciled_when_it_ends(gateway: Gateway) -> None:
    key, log_id = new_key(gateway, tpm=5000)
    limiter = gateway.app.state.rate_limiter
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=chat("count to three", stream=True),
                      headers={"Authorization": f"Bearer {key}"}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "5000"
        body = r.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert limiter.tokens_used(log_id) == (3 + 3) + 5  # not the 1024-token default reservation


def test_concurrent_requests_over_the_key_limit_are_refused(mock: MockUpstream, gateway: Gateway) -> None:
    key, log_id = new_key(gateway, max_concurrent=1)
    thread, out = in_background(gateway, key, chat("hi\n#mock latency_ms=400"))
    assert mock.wait_for(lambda: mock.in_flight == 1)
    second = post(gateway, key, chat())
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert second.headers["retry-after"] == "1"
    thread.join(10)
    assert out[0].status_code == 200
    assert gateway.app.state.rate_limiter.active(log_id) == 0
    assert post(gateway, key, chat()).status_code == 200


def test_config_keys_and_unlimited_keys_pass_untouched(gateway: Gateway) -> None:
    r = post(gateway, CLIENT_KEY, chat())
    assert r.status_code == 200
    assert not any(h.startswith("x-ratelimit") for h in r.headers)
    key, _ = new_key(gateway)
    r = post(gateway, key, chat())
    assert r.status_code == 200
    assert not any(h.startswith("x-ratelimit") for h in r.headers)
    limiter = gateway.app.state.rate_limiter
    assert not limiter._requests and not limiter._tokens and not limiter._active


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ClientIdentity("dbkey_1", "k", metered=True, rpm=2, tpm=100)
    first = limiter.admit(key, 40)
    clock.now += 30
    limiter.admit(key, 10)
    with pytest.raises(ProxyError) as err:
        limiter.admit(key, 10)
    assert err.value.status == 429 and err.value.type == "requests"
    assert err.value.headers["retry-after"] == "30"  # when the first request leaves the window
    limiter.release(first, 5)  # reconciled: 40 reserved, 5 used
    assert limiter.tokens_used("dbkey_1") == 15
    clock.now += 30  # the first request is now 60 s old
    admitted = limiter.admit(key, 90)
    assert limiter.requests_used("dbkey_1") == 2 and limiter.tokens_used("dbkey_1") == 100
    dict_headers = dict(admitted.headers)
    assert dict_headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert dict_headers[b"x-ratelimit-reset-requests"] == b"30s"
    with pytest.raises(ProxyError) as err:
        limiter.admit(ClientIdentity("dbkey_1", "k", metered=True, tpm=100), 1)
    assert err.value.type == "tokens" and err.value.headers["retry-after"] == "30"
    clock.now += PERIOD
    limiter.release(admitted, 1)  # reconciled as it leaves the window
    assert limiter.tokens_used("dbkey_1") == 0


def test_reset_durations_read_like_openai() -> None:
    assert duration(0.25) == "250ms"
    assert duration(1.5) == "1.5s"
    assert duration(60) == "1m0s"
    assert duration(59.9999) == "1m0s"
    assert duration(6.0) == "6s"
