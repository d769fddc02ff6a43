"""End to end through the official ``openai`` SDK: client → gateway (uvicorn) → mock upstream.

What the mock sends is fixed by its documented rules (``llm_proxy.testing.mock_upstream``), so
every content, token count and price below is computed by hand from those rules and the
catalog prices, never read back from the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import CLIENT_KEY, MASTER_KEY, UPSTREAM_KEY, Gateway

from llm_proxy.access.key_lookup import key_id
from llm_proxy.testing.mock_upstream import MockUpstream

CONTENT = "Hello from the mock upstream."
REASONING = "Let me think it through."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def mock_prompt_tokens(*texts: str) -> int:
    """The mock's rule: 3 per message plus its whitespace-separated words."""
    return sum(3 + len(t.split()) for t in texts)


def per_million(tokens: int, usd: float) -> float:
    return tokens * usd / 1_000_000


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as c:
        yield c


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def async_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)


def only_row(gateway: Gateway) -> dict[str, Any]:
    rows = gateway.rows(1)
    assert len(rows) == 1, rows
    return rows[0]


# -- plain completions: sync, async, JSON and SSE -------------------------------------------------


def test_sync_non_streaming(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    resp = client.chat.completions.create(model="gpt-4o", messages=user("Say hello please"))
    assert resp.choices[0].message.content == CONTENT
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.id.startswith("chatcmpl-mock")
    assert resp.model == "gpt-4o"
    prompt = mock_prompt_tokens("Say hello please")
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, 5)
    assert len(mock.requests) == 1
    assert mock.requests[0].path == "/v1/chat/completions"
    assert mock.requests[0].body["model"] == "gpt-4o"

    row = only_row(gateway)
    assert row["status"] == 200
    assert row["error_type"] is None
    assert row["stream"] == 0
    assert row["provider"] == "openai"
    assert (row["requested_model"], row["resolved_model"], row["upstream_model"]) == ("gpt-4o",) * 3
    assert row["finish_reason"] == "stop"
    # the upstream's own request id (the mock numbers them like its completion ids)
    assert row["upstream_request_id"] == "req_mock_" + resp.id.removeprefix("chatcmpl-mock")
    assert row["usage_estimated"] == 0


def test_sync_streaming(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=user("stream it"), stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == CONTENT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-mock")

    row = only_row(gateway)
    assert (row["status"], row["stream"], row["finish_reason"]) == (200, 1, "stop")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (mock_prompt_tokens("stream it"), 5)


def test_async_non_streaming_and_streaming(gateway: Gateway, mock: MockUpstream) -> None:
    async def main() -> tuple[str, str]:
        async with async_client(gateway) as c:
            resp = await c.chat.completions.create(model="mock-gpt", messages=user("async one"))
            stream = await c.chat.completions.create(
                model="mock-gpt", messages=user("async two\n#mock chunks=7"), stream=True
            )
            pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            return resp.choices[0].message.content or "", "".join(pieces)

    plain, streamed = run(main())
    assert plain == CONTENT
    assert streamed == CONTENT + " more5 more6"
    rows = gateway.rows(2)
    assert [(r["stream"], r["status"], r["completion_tokens"]) for r in rows] == [(0, 200, 5), (1, 200, 7)]


def test_async_concurrent_requests_each_logged_once(gateway: Gateway, mock: MockUpstream) -> None:
    async def main() -> list[str]:
        async with async_client(gateway) as c:

            async def one(i: int) -> str:
                raw = await c.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=user(f"request number {i}"), stream=i % 2 == 1
                )
                parsed = raw.parse()
                if i % 2 == 1:
                    text = "".join([ch.choices[0].delta.content or "" async for ch in parsed if ch.choices])
                else:
                    text = parsed.choices[0].message.content
                assert text == CONTENT
                return raw.headers["x-request-id"]

            return list(await asyncio.gather(*(one(i) for i in range(8))))

    ids = run(main())
    assert len(set(ids)) == 8
    rows = gateway.rows(8)
    assert len(rows) == 8
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["status"] == 200 and r["error_type"] is None for r in rows)
    assert len(mock.requests) == 8


# -- tools -------------------------------------------------------------------------------------


def test_tool_call_non_streaming(client: openai.OpenAI, gateway: Gateway) -> None:
    resp = client.chat.completions.create(
        model="gpt-4o", messages=user("Weather in Paris?"), tools=[WEATHER_TOOL]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id == "call_mock_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    row = only_row(gateway)
    assert row["finish_reason"] == "tool_calls"
    assert row["completion_tokens"] == 3


def test_tool_call_streaming_deltas_reassemble(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("Weather in Paris?"), tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish: list[str] = []
    fragments = 0
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        for tc in choice.delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            if tc.id:
                entry["id"] = tc.id
            if tc.function is not None:
                entry["name"] += tc.function.name or ""
                if tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
                    fragments += 1
    assert finish == ["tool_calls"]
    assert list(calls) == [0]
    assert calls[0]["id"] == "call_mock_1"
    assert calls[0]["name"] == "get_weather"
    assert fragments == 3  # really streamed in pieces, not one blob
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    row = only_row(gateway)
    assert (row["finish_reason"], row["completion_tokens"], row["usage_estimated"]) == ("tool_calls", 3, 0)
    assert row["ttft_ms"] is not None


# -- the request reaches the upstream untouched --------------------------------------------------


VISION_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You describe images."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
]


def test_vision_parts_and_extra_fields_pass_through(client: openai.OpenAI, gateway: Gateway,
                                                     mock: MockUpstream) -> None:
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=VISION_MESSAGES,  # type: ignore[arg-type]
        n=2,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0.25,
        extra_body={"my_vendor_field": {"a": 1}},
    )
    assert resp.choices[0].message.tool_calls is not None
    body = mock.requests[-1].body
    assert body["model"] == "gpt-4o"
    assert body["messages"] == VISION_MESSAGES
    assert body["n"] == 2
    assert body["response_format"] == {"type": "json_object"}
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 2
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["temperature"] == 0.25
    assert body["my_vendor_field"] == {"a": 1}
    assert "stream_options" not in body
    # the mock counts only the text parts of list content
    row = only_row(gateway)
    assert row["prompt_tokens"] == mock_prompt_tokens("You describe images.", "What is in this picture?")


def test_streaming_body_rewrite_keeps_everything_else(client: openai.OpenAI, mock: MockUpstream) -> None:
    """A stream's body is re-serialised (usage is requested); nothing else may change."""
    messages = [
        *VISION_MESSAGES,
        {"role": "assistant", "content": "Noted — ünïcödé 世界 🐈"},
        {"role": "user", "content": "And now? \"quoted\" \\ backslash"},
    ]
    stream = client.chat.completions.create(
        model="gpt4",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        temperature=0.1,
        max_tokens=123,
        seed=42,
        extra_body={"my_vendor_field": {"a": 1, "nested": [1.5, None, True]}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == CONTENT
    body = mock.requests[-1].body
    assert body["messages"] == messages
    assert body["model"] == "gpt-4o"
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.1, 123, 42)
    assert body["my_vendor_field"] == {"a": 1, "nested": [1.5, None, True]}
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


# -- usage in streams ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
def test_stream_without_usage_request_hides_usage_but_meters_it(
    client: openai.OpenAI, gateway: Gateway, mock: MockUpstream, stream_options: dict[str, Any] | None
) -> None:
    extra: dict[str, Any] = {} if stream_options is None else {"stream_options": stream_options}
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=user("count my tokens"), stream=True, **extra)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CONTENT
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask for it"
    # ...but the upstream was asked for usage, and the log has it
    assert mock.requests[-1].body["stream_options"]["include_usage"] is True
    row = only_row(gateway)
    assert row["usage_estimated"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (mock_prompt_tokens("count my tokens"), 5)
    assert (row["reasoning_tokens"], row["cached_tokens"]) == (0, 0)


def test_stream_with_usage_request_gets_usage_chunk(client: openai.OpenAI, gateway: Gateway,
                                                     mock: MockUpstream) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=user("count my tokens\n#mock cached=3"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CONTENT
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    last = chunks[-1]
    assert last is with_usage[0]
    assert last.choices == []
    prompt = mock_prompt_tokens("count my tokens\n#mock cached=3")
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        prompt, 5, prompt + 5,
    )
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 3
    assert mock.requests[-1].body["stream_options"] == {"include_usage": True}
    row = only_row(gateway)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (prompt, 5, 3)


# -- routing: aliases, provider/model, model list ---------------------------------------------------


def test_alias_resolves_to_upstream_model(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    resp = client.chat.completions.create(model="gpt4", messages=user("hi"))
    assert resp.choices[0].message.content == CONTENT
    assert mock.requests[-1].body["model"] == "gpt-4o"
    row = only_row(gateway)
    assert (row["requested_model"], row["resolved_model"]) == ("gpt4", "gpt-4o")
    assert (row["provider"], row["upstream_model"]) == ("openai", "gpt-4o")
    assert "gpt4" in (row["route"] or "")


def test_provider_slash_model_pins_provider(client: openai.OpenAI, gateway: Gateway,
                                            mock: MockUpstream) -> None:
    client.chat.completions.create(model="deepseek/deepseek-chat", messages=user("hi"))
    assert mock.requests[-1].body["model"] == "deepseek-chat"
    # a model the provider does not list still passes through when pinned
    client.chat.completions.create(model="openai/some-self-hosted-model", messages=user("hi"))
    assert mock.requests[-1].body["model"] == "some-self-hosted-model"
    # an unqualified name goes to the provider that lists it
    client.chat.completions.create(model="deepseek-chat", messages=user("hi"))
    assert mock.requests[-1].body["model"] == "deepseek-chat"
    rows = gateway.rows(3)
    assert [(r["requested_model"], r["provider"], r["upstream_model"], r["status"]) for r in rows] == [
        ("deepseek/deepseek-chat", "deepseek", "deepseek-chat", 200),
        ("openai/some-self-hosted-model", "openai", "some-self-hosted-model", 200),
        ("deepseek-chat", "deepseek", "deepseek-chat", 200),
    ]


def test_models_list(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {k: m.owned_by for k, m in models.items()} == {
        "gpt-4o": "openai",
        "gpt-4o-mini": "openai",
        "mock-gpt": "openai",
        "deepseek-chat": "deepseek",
        "deepseek-reasoner": "deepseek",
        "gpt4": "openai",
    }
    assert all(m.object == "model" and isinstance(m.created, int) for m in models.values())
    assert mock.requests == []  # answered by the gateway itself
    row = only_row(gateway)
    assert (row["endpoint"], row["status"]) == ("models", 200)


# -- auth and key hygiene -----------------------------------------------------------------------------


def _db_bytes(db_path: Path) -> bytes:
    parts = [Path(str(db_path) + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def test_auth_headers_and_upstream_key(gateway: Gateway, mock: MockUpstream) -> None:
    payload = {"model": "gpt-4o", "messages": user("auth check")}
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=10) as sdk:
        assert sdk.chat.completions.create(model="gpt-4o", messages=user("auth check")).choices
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for headers in ({"x-api-key": CLIENT_KEY}, {"api-key": CLIENT_KEY},
                        {"Authorization": f"Bearer {CLIENT_KEY}"}):
            r = http.post("/v1/chat/completions", json=payload, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == CONTENT
            assert CLIENT_KEY not in r.text and CLIENT_KEY not in str(r.headers)

    assert len(mock.requests) == 4
    for rec in mock.requests:
        assert rec.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "x-api-key" not in rec.headers and "api-key" not in rec.headers
        seen = json.dumps(rec.headers) + json.dumps(rec.body)
        assert CLIENT_KEY not in seen and MASTER_KEY not in seen

    rows = gateway.rows(4)
    assert [r["client_key_id"] for r in rows] == [key_id(MASTER_KEY)] + [key_id(CLIENT_KEY)] * 3
    for r in rows:
        assert r["client_key_id"]
        assert all(CLIENT_KEY not in str(v) and MASTER_KEY not in str(v) for v in r.values())

    def clean() -> None:
        data = _db_bytes(gateway.db_path)
        assert data, "no request log on disk"
        for secret in (CLIENT_KEY, MASTER_KEY, UPSTREAM_KEY):
            assert secret.encode() not in data

    clean()
    gateway.stop()  # shutdown drains the writer; the WAL may be checkpointed into the main file
    clean()


# -- metering --------------------------------------------------------------------------------------------


def test_cost_gpt4o_with_cached_tokens(client: openai.OpenAI, gateway: Gateway) -> None:
    text = "price this request please\n#mock cached=2"
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user(text))
    resp = raw.parse()
    assert resp.choices[0].message.content == CONTENT
    overhead = raw.headers.get("x-llm-proxy-overhead-ms")
    assert overhead is not None and float(overhead) >= 0
    request_id = raw.headers.get("x-request-id")
    assert request_id and request_id.startswith("req_")

    prompt, cached, completion = mock_prompt_tokens(text), 2, 5
    assert prompt == 9
    expected = per_million(prompt - cached, 2.5) + per_million(cached, 1.25) + per_million(completion, 10.0)
    row = only_row(gateway)
    assert row["request_id"] == request_id
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"], row["cached_tokens"]) == (
        prompt, completion, 0, cached,
    )
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert row["cost_usd"] == pytest.approx(0.00007, rel=1e-9)
    assert row["latency_ms"] > 0
    assert row["overhead_ms"] == pytest.approx(float(overhead), abs=0.001)
    assert row["ttft_ms"] is None  # not a stream


def test_client_request_id_is_kept(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=user("hi"), extra_headers={"x-request-id": "my-trace.42"}
    )
    assert raw.headers["x-request-id"] == "my-trace.42"
    assert only_row(gateway)["request_id"] == "my-trace.42"


def test_cost_deepseek_chat_cached(client: openai.OpenAI, gateway: Gateway) -> None:
    text = "cheap model\n#mock cached=4"
    client.chat.completions.create(model="deepseek-chat", messages=user(text))
    prompt = mock_prompt_tokens(text)
    expected = per_million(prompt - 4, 0.14) + per_million(4, 0.0028) + per_million(5, 0.28)
    row = only_row(gateway)
    assert (row["provider"], row["prompt_tokens"], row["cached_tokens"]) == ("deepseek", prompt, 4)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_deepseek_reasoner_stream_reasoning(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-reasoner", messages=user("think first"), stream=True
    )
    assert raw.headers.get("x-llm-proxy-overhead-ms") is not None
    assert raw.headers.get("x-request-id")
    reasoning, content = [], []
    for chunk in raw.parse():
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            assert not content, "reasoning must come before the answer"
            reasoning.append(extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
    assert "".join(reasoning) == REASONING
    assert len(reasoning) == 3
    assert "".join(content) == CONTENT

    prompt = mock_prompt_tokens("think first")
    row = only_row(gateway)
    assert row["request_id"] == raw.headers["x-request-id"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"], row["cached_tokens"]) == (
        prompt, 8, 3, 0,
    )
    # deepseek publishes no separate reasoning price: reasoning tokens bill as output
    assert row["cost_usd"] == pytest.approx(per_million(prompt, 0.14) + per_million(8, 0.28), rel=1e-9)
    assert row["ttft_ms"] is not None and row["ttft_ms"] > 0
    assert row["latency_ms"] >= row["ttft_ms"]
    assert row["overhead_ms"] is not None and row["overhead_ms"] >= 0


def test_ttft_is_the_first_token_not_the_headers(client: openai.OpenAI, gateway: Gateway) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=user("slow\n#mock chunk_ms=60 chunks=2"), stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from"
    row = only_row(gateway)
    # role chunk at once, first content after one chunk_ms, then the rest
    assert row["ttft_ms"] >= 50
    assert row["latency_ms"] >= row["ttft_ms"] + 50


def test_deepseek_reasoning_content_in_non_stream_message(client: openai.OpenAI, gateway: Gateway) -> None:
    resp = client.chat.completions.create(model="deepseek-reasoner", messages=user("think"))
    message = resp.choices[0].message
    assert message.content == CONTENT
    assert (message.model_extra or {}).get("reasoning_content") == REASONING
    assert resp.to_dict()["choices"][0]["message"]["reasoning_content"] == REASONING
    assert resp.usage is not None and resp.usage.completion_tokens_details is not None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 3
    row = only_row(gateway)
    assert (row["reasoning_tokens"], row["completion_tokens"]) == (3, 8)


def test_async_stream_metering(gateway: Gateway) -> None:
    async def main() -> str:
        async with async_client(gateway) as c:
            stream = await c.chat.completions.create(
                model="deepseek-chat",
                messages=[{"role": "system", "content": "be brief"}, *user("hello there\n#mock cached=5")],
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = None
            text = ""
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            assert usage is not None and usage.prompt_tokens_details is not None
            assert usage.prompt_tokens_details.cached_tokens == 5
            return text

    assert run(main()) == CONTENT
    prompt = mock_prompt_tokens("be brief", "hello there\n#mock cached=5")
    row = only_row(gateway)
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (prompt, 5, 5)
    expected = per_million(prompt - 5, 0.14) + per_million(5, 0.0028) + per_million(5, 0.28)
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)
