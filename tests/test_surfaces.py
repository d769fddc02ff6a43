"""The Anthropic Messages and OpenAI Responses surfaces end to end, through the official SDKs.

Translated: the mock OpenAI upstream serves them through chat. Pass-through: a replay
upstream answers Anthropic's /v1/messages and OpenAI's /v1/responses with real fixtures,
and what it received must be the client's own request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from conftest import CLIENT_KEY, FIXTURES, Gateway, gateway_config, read_body, serve_asgi

from llm_proxy.testing.mock_upstream import MockUpstream

WEATHER_TOOL = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


class Replay:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        body = json.loads(raw)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "headers": headers, "body": body, "raw": raw})
        stream = body.get("stream")
        name = {
            ("/v1/messages", True): "anthropic/stream_basic.sse",
            ("/v1/messages", False): "anthropic/response_basic.json",
            ("/v1/responses", True): "openai_responses/stream_text_final.sse",
            ("/v1/responses", False): "openai_responses/response_text.json",
        }[(scope["path"], bool(stream))]
        data = (FIXTURES / name).read_bytes()
        ctype = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[Replay, str]]:
    app = Replay()
    with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
def gw(mock: MockUpstream, replay: tuple[Replay, str], tmp_path: Any) -> Iterator[Gateway]:
    app, url = replay
    app.requests.clear()
    config = gateway_config(mock.base_url_v1, tmp_path / "surfaces.db")
    config["providers"]["claude"] = {"type": "anthropic", "base_url": url, "api_key": "sk-ant-upstream",
                                     "models": ["claude-sonnet-4-6"]}
    config["providers"]["oai"] = {"type": "openai", "base_url": url + "/v1", "api_key": "sk-oai-upstream",
                                  "responses_api": True, "models": ["gpt-5.4-mini"]}
    gateway = Gateway(config).start()
    yield gateway
    gateway.stop()


def claude(gw: Gateway) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)  # closed with the gateway: no sockets left for the GC
    return client


def oai(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def test_messages_translated_to_an_openai_provider(gw: Gateway, mock: MockUpstream) -> None:
    msg = claude(gw).messages.create(model="gpt-4o", max_tokens=100, system="Be brief.",
                                     messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from the mock upstream."
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 5
    sent = mock.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 100
    (row,) = gw.rows(1)
    assert (row["endpoint"], row["provider"], row["status"], row["completion_tokens"]) == ("messages", "openai", 200, 5)


def test_messages_stream_translated(gw: Gateway, mock: MockUpstream) -> None:
    with claude(gw).messages.stream(model="gpt-4o", max_tokens=100,
                                    messages=[{"role": "user", "content": "hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the mock upstream."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5
    assert mock.requests[-1].body["stream_options"] == {"include_usage": True}
    (row,) = gw.rows(1)
    assert (row["stream"], row["completion_tokens"], row["usage_estimated"]) == (1, 5, 0)


def test_messages_tools_translated(gw: Gateway) -> None:
    msg = claude(gw).messages.create(model="gpt-4o", max_tokens=100, tools=[WEATHER_TOOL],
                                     messages=[{"role": "user", "content": "weather in Paris?"}])
    tool = next(b for b in msg.content if b.type == "tool_use")
    assert (tool.name, tool.input, msg.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")
    with claude(gw).messages.stream(model="gpt-4o", max_tokens=100, tools=[WEATHER_TOOL],
                                    messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    tool = next(b for b in final.content if b.type == "tool_use")
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris"})


def test_messages_pass_through_to_anthropic(gw: Gateway, replay: tuple[Replay, str]) -> None:
    msg = claude(gw).messages.create(model="claude-sonnet-4-6", max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text.startswith("Hello! I'm doing well")
    sent = replay[0].requests[-1]
    assert sent["path"] == "/v1/messages" and sent["headers"]["x-api-key"] == "sk-ant-upstream"
    assert sent["body"] == {"model": "claude-sonnet-4-6", "max_tokens": 50,
                            "messages": [{"role": "user", "content": "hi"}]}
    with claude(gw).messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
        assert "".join(stream.text_stream) == "Hello there!"
    rows = gw.rows(2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(12, 29), (11, 6)]


def test_messages_errors_in_anthropic_shape(gw: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude(gw).messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    wrong = anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong-key-123", max_retries=0)
    gw.clients.append(wrong)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_count_tokens_estimate(gw: Gateway) -> None:
    count = claude(gw).messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "hello " * 40}])
    assert 40 <= count.input_tokens <= 120


def test_responses_translated_through_chat(gw: Gateway, mock: MockUpstream) -> None:
    resp = oai(gw).responses.create(model="gpt-4o", instructions="Be brief.", input="hello")
    assert resp.output_text == "Hello from the mock upstream." and resp.status == "completed"
    assert resp.usage is not None and resp.usage.output_tokens == 5
    sent = mock.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    stream = oai(gw).responses.create(model="gpt-4o", input="hello", stream=True)
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the mock upstream." and events[-1].type == "response.completed"
    rows = gw.rows(2)
    assert [(r["endpoint"], r["stream"], r["completion_tokens"]) for r in rows] == [
        ("responses", 0, 5), ("responses", 1, 5)]


def test_responses_function_call_round_trip(gw: Gateway, mock: MockUpstream) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}]
    first = oai(gw).responses.create(model="gpt-4o", input="weather in Paris?", tools=tools)
    call = next(o for o in first.output if o.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    oai(gw).responses.create(model="gpt-4o", tools=tools, input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ])
    sent = mock.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C"}


def test_responses_without_state_is_a_clear_400(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(gw).responses.create(model="gpt-4o", input="again", previous_response_id="resp_123")
    assert "previous_response_id" in info.value.message


def test_responses_pass_through_to_openai(gw: Gateway, replay: tuple[Replay, str]) -> None:
    resp = oai(gw).responses.create(model="gpt-5.4-mini", input="hi")
    assert resp.output_text
    sent = replay[0].requests[-1]
    assert sent["path"] == "/v1/responses" and sent["body"] == {"model": "gpt-5.4-mini", "input": "hi"}
    assert sent["headers"]["authorization"] == "Bearer sk-oai-upstream"
    events = list(oai(gw).responses.create(model="gpt-5.4-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    rows = gw.rows(2)
    assert all(r["status"] == 200 and r["completion_tokens"] for r in rows)


def test_messages_streamed_tool_conversation_is_metered(gw: Gateway, mock: MockUpstream) -> None:
    """The acceptance path: a tool-using conversation streamed by the anthropic SDK through
    /v1/messages, served by an OpenAI-format upstream, with usage and cost in the log."""
    client = claude(gw)
    history: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    with client.messages.stream(model="gpt-4o", max_tokens=100, tools=[WEATHER_TOOL], messages=history) as stream:
        first = stream.get_final_message()
    tool = next(b for b in first.content if b.type == "tool_use")
    history += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}]}]
    with client.messages.stream(model="gpt-4o", max_tokens=100, tools=[WEATHER_TOOL], messages=history) as stream:
        second = stream.get_final_message()
    sent = mock.requests[-1].body["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == tool.id and sent[-1] == {
        "role": "tool", "tool_call_id": tool.id, "content": "18C"}
    assert second.usage.output_tokens == first.usage.output_tokens == 3  # the mock answers tools with a call
    rows = gw.rows(2)
    for row, msg in zip(rows, (first, second), strict=True):
        assert (row["endpoint"], row["stream"], row["usage_estimated"]) == ("messages", 1, 0)
        assert row["completion_tokens"] == msg.usage.output_tokens
        # gpt-4o at the catalog price: 2.5 in, 10 out per 1M tokens
        assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 2.5 + row["completion_tokens"] * 10) / 1e6,
                                                rel=1e-12)
    assert rows[1]["prompt_tokens"] > rows[0]["prompt_tokens"] > 0
