"""The inbound Anthropic Messages translation, checked against the shared fixtures and the
official ``anthropic`` SDK's own types, SSE parser and stream accumulator (over an in-memory
httpx transport: no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2 as httpx  # anthropic 2.x is built on httpx2
import orjson
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from conftest import FIXTURES as FIX
from pydantic import TypeAdapter

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError
from llm_proxy.inbound.anthropic_messages import (
    EventStream,
    count_tokens,
    error_body,
    error_type,
    from_chat,
    message_id,
    to_chat,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
EVENT = TypeAdapter(RawMessageStreamEvent)


def fixture(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def chunks(name: str) -> list[dict[str, Any]]:
    """The ``data:`` payloads of an OpenAI-style SSE fixture, ``[DONE]`` skipped."""
    out = []
    for line in (FIX / name).read_text().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(orjson.loads(line[5:].strip()))
    return out


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split produced SSE bytes into (event name, data) and check the framing."""
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw.decode().split("\n\n")[:-1]:
        lines = frame.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        data = orjson.loads(lines[1][6:])
        assert lines[1][6:] == orjson.dumps(data).decode()  # compact JSON
        assert data["type"] == lines[0][7:]
        out.append((lines[0][7:], data))
    return out


def run_stream(name: str, usage: Usage | None = None) -> tuple[bytes, EventStream]:
    es = EventStream("claude-sonnet-4-5", "msg_test", input_tokens=7)
    raw = es.start() + b"".join(es.feed(c) for c in chunks(name)) + es.finish(usage)
    return raw, es


def check_order(evs: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's stream grammar: start, sequential blocks (start, deltas, stop), delta, stop."""
    for _, data in evs:
        EVENT.validate_python(data)  # every event is one the SDK knows
    names = [n for n, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_delta") == names.count("message_stop") == 1
    open_index, last = None, -1
    for name, data in evs[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == last + 1
            open_index = last = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        else:
            assert name == "content_block_stop" and data["index"] == open_index
            open_index = None
    assert open_index is None


def blocks(evs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Reassemble content blocks by hand (tool input as the concatenated JSON string)."""
    out: list[dict[str, Any]] = []
    for name, data in evs:
        if name == "content_block_start":
            out.append(dict(data["content_block"], json=""))
        elif name == "content_block_delta":
            d, b = data["delta"], out[data["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            elif d["type"] == "input_json_delta":
                b["json"] += d["partial_json"]
    return out


def sdk_client(handler: Callable[[httpx.Request], httpx.Response]) -> anthropic.Anthropic:
    transport = httpx.MockTransport(handler)
    return anthropic.Anthropic(api_key="k", base_url="http://gw", http_client=httpx.Client(transport=transport),
                               max_retries=0)


def sdk_final(raw: bytes) -> Message:
    """Feed our bytes to the SDK's SSE parser and MessageStream accumulator."""
    headers = {"content-type": "text/event-stream"}
    client = sdk_client(lambda _: httpx.Response(200, content=raw, headers=headers))
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        return s.get_final_message()


# --- to_chat -----------------------------------------------------------------------------


def test_basic_request() -> None:
    assert to_chat(fixture("anthropic/request_basic.json")) == {
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }


def test_system_stream_request() -> None:
    out = to_chat(fixture("anthropic/request_system_stream.json"))
    assert out == {
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "temperature": 0.7, "stop": ["\n\nHuman:"],
        "user": "user-123", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Hello"}],
    }


def test_cache_control_kept_only_when_asked() -> None:
    body = fixture("anthropic/request_system_stream.json")
    kept = to_chat(body, cache_control=True)["messages"][0]
    assert kept == {"role": "system", "content": [
        {"type": "text", "text": "You are a helpful assistant.", "cache_control": {"type": "ephemeral"}}]}


def test_tools_request() -> None:
    body = fixture("anthropic/request_tools.json")
    out = to_chat(body)
    tool = body["tools"][0]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": tool["description"], "parameters": tool["input_schema"]}}]
    assert out["tool_choice"] == "auto" and "parallel_tool_calls" not in out
    assert out["messages"] == [{"role": "user", "content": "What is the weather like in San Francisco?"}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = fixture("anthropic/request_tools.json") | {"tool_choice": choice | {"disable_parallel_tool_use": True}}
    out = to_chat(body)
    assert out["tool_choice"] == expected
    assert out.get("parallel_tool_calls") is (None if choice["type"] == "none" else False)


def test_vision_request() -> None:
    out = to_chat(fixture("anthropic/request_vision.json"))
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {
            "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"}},
        {"type": "text", "text": "Describe these images."},
    ]}]


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (2048, "low"), (4096, "medium"),
                                                 (8192, "medium"), (10000, "high")])
def test_thinking_request(budget: int, effort: str) -> None:
    body = fixture("anthropic/request_thinking.json")
    body["thinking"]["budget_tokens"] = budget
    out = to_chat(body)
    assert out["reasoning_effort"] == effort and out["max_tokens"] == 16000 and out["stream"] is True
    assert "thinking" not in out
    long_id = "user_" + "a" * 64 + "_account__session_" + "b" * 36
    hashed = to_chat(body | {"metadata": {"user_id": long_id}})["user"]
    assert len(hashed) == 64 and hashed == to_chat(body | {"metadata": {"user_id": long_id}})["user"]
    assert "reasoning_effort" not in to_chat(body | {"thinking": {"type": "disabled"}})


def test_multi_turn_tool_conversation() -> None:
    body = {"model": "m", "max_tokens": 100, "system": "Be brief.", "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "timeout"}]},
            {"type": "text", "text": "Also, thanks!"},
        ]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "xx"}]},
    ]}
    assert to_chat(body)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] timeout"},
        {"role": "user", "content": "Also, thanks!"},
    ]


def test_tool_result_images_follow_as_user_content() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [image]}]},
    ]}
    msgs = to_chat(body)["messages"]
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == "{}" and msgs[0]["content"] is None
    assert msgs[1] == {"role": "tool", "tool_call_id": "t1", "content": ""}
    assert msgs[2]["role"] == "user" and msgs[2]["content"][1]["image_url"]["url"].startswith("data:image/png")


def test_documents() -> None:
    pdf = {"type": "document", "title": "a.pdf",
           "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}
    msgs = to_chat({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [pdf, text]}]})
    assert msgs["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "text", "text": "notes"},
    ]


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
     "'hologram'"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "x"}]}]}, "'tool_result'"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "custom tools"),
])
def test_bad_requests(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ProxyError) as exc:
        to_chat(body)
    assert exc.value.status == 400 and message in exc.value.message


# --- from_chat ---------------------------------------------------------------------------


def test_from_chat_basic() -> None:
    obj = from_chat(fixture("openai_chat/response_basic.json"), "claude-sonnet-4-5")
    msg = Message.model_validate(obj)
    assert msg.id == "msg_B9MBs8CjcvOU2jLn4n570S5qMJKcT" and msg.model == "claude-sonnet-4-5"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello! How can I assist you today?"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (19, 10, 0)


def test_from_chat_tools() -> None:
    msg = Message.model_validate(from_chat(fixture("openai_chat/response_tools.json"), "m"))
    assert msg.stop_reason == "tool_use" and len(msg.content) == 1
    block = msg.content[0]
    assert block.type == "tool_use" and block.id == "call_abc123" and block.name == "get_current_weather"
    assert block.input == {"location": "Boston, MA"}
    # the assistant turn replays into the same tool call
    replay = to_chat({"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]}]})
    call = replay["messages"][0]["tool_calls"][0]
    assert call["id"] == "call_abc123" and json.loads(call["function"]["arguments"]) == {"location": "Boston, MA"}


def test_from_chat_reasoning_and_cache_usage() -> None:
    completion = fixture("deepseek/response_reasoning.json")
    completion["usage"]["prompt_cache_hit_tokens"] = 8
    msg = Message.model_validate(from_chat(completion, "deepseek-reasoner"))
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking.startswith("We are asked") and msg.content[0].signature == ""
    assert msg.content[1].text.startswith('The word "strawberry"')
    assert msg.id == "msg_945bb10c-9bf3-47ff-a2a2-43bbe9705c72"
    # DeepSeek's cached-token dialect: 8 of the 18 prompt tokens hit the cache
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (10, 345, 8)
    explicit = from_chat(completion, "m", Usage(100, 5, cached_tokens=60, cache_write_tokens=30))
    assert explicit["usage"] == {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 30,
                                 "cache_read_input_tokens": 60}


@pytest.mark.parametrize(("finish", "calls", "stop"), [
    ("stop", False, "end_turn"), ("length", False, "max_tokens"), ("content_filter", False, "refusal"),
    ("tool_calls", True, "tool_use"), ("stop", True, "tool_use"), (None, False, "end_turn"),
])
def test_from_chat_stop_reasons(finish: str | None, calls: bool, stop: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = [{"id": "c.1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]
    obj = from_chat({"id": "c", "choices": [{"message": message, "finish_reason": finish}]}, "m")
    msg = Message.model_validate(obj)
    assert msg.stop_reason == stop
    if calls:  # ids made Anthropic-safe; non-object arguments kept visibly, not dropped
        assert msg.content[1].id == "c_1" and msg.content[1].input == {"_raw_arguments": "[1]"}


def test_from_chat_without_choices_is_upstream_error() -> None:
    with pytest.raises(ProxyError) as exc:
        from_chat({"id": "x", "choices": []}, "m")
    assert exc.value.status == 502


def test_from_chat_through_sdk_client() -> None:
    obj = from_chat(fixture("openai_chat/response_tools.json"), "m")
    client = sdk_client(lambda _: httpx.Response(200, json=obj))
    msg = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].input == {"location": "Boston, MA"}


# --- EventStream -------------------------------------------------------------------------


def test_stream_text() -> None:
    raw, es = run_stream("openai_chat/stream_basic_with_usage.sse")
    evs = events(raw)
    check_order(evs)
    expected = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks("openai_chat/stream_basic_with_usage.sse") if c["choices"])
    assert [b["type"] for b in blocks(evs)] == ["text"] and blocks(evs)[0]["text"] == expected
    assert evs[0][1]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert evs[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert evs[-2][1]["usage"] == {"input_tokens": 14, "output_tokens": 30, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0}
    assert es.finish_reason == "stop" and es.stop_reason == "end_turn" and es.usage.completion_tokens == 30
    final = sdk_final(raw)
    assert final.content[0].text == expected and final.usage.output_tokens == 30
    assert final.usage.input_tokens == 14 and final.stop_reason == "end_turn"


def test_stream_tool_call() -> None:
    raw, _ = run_stream("openai_chat/stream_tool_call.sse")
    evs = events(raw)
    check_order(evs)
    (block,) = blocks(evs)
    assert block["type"] == "tool_use" and block["id"] == "call_4XzlGBLtUe9dy3GVNV4jhq7h"
    assert block["name"] == "get_weather" and block["input"] == {}
    assert json.loads(block["json"]) == {"city": "New York City"}
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    final = sdk_final(raw)
    assert final.content[0].input == {"city": "New York City"} and final.stop_reason == "tool_use"


def test_stream_reasoning() -> None:
    raw, _ = run_stream("deepseek/stream_reasoning.sse")
    evs = events(raw)
    check_order(evs)
    source = chunks("deepseek/stream_reasoning.sse")
    thinking = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in source)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in source)
    got = blocks(evs)
    assert [b["type"] for b in got] == ["thinking", "text"]
    assert got[0]["thinking"] == thinking and got[1]["text"] == text
    sig = [d for n, d in evs if n == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert len(sig) == 1 and sig[0]["index"] == 0  # thinking closed (signed) before text starts
    assert evs[-2][1]["usage"]["output_tokens"] == 219  # usage riding on the finish chunk
    final = sdk_final(raw)
    assert final.content[0].thinking == thinking and final.content[1].text == text


def test_stream_mixed_blocks_and_explicit_usage() -> None:
    """Text, then two tool calls (one complete in its first chunk, Gemini-style)."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    es = EventStream("m", "msg_x")
    raw = es.start() + b"".join(es.feed(c) for c in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": '{"y":2}'}}]}),
        chunk({}, "stop"),
    ]) + es.finish(Usage(50, 9, cached_tokens=40))
    evs = events(raw)
    check_order(evs)
    got = blocks(evs)
    assert [b["type"] for b in got] == ["text", "tool_use", "tool_use"]
    assert json.loads(got[1]["json"]) == {"x": 1} and json.loads(got[2]["json"]) == {"y": 2}
    assert got[2]["id"] == "toolu_x_1"  # generated when the server sends none
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert evs[-2][1]["usage"] == {"input_tokens": 10, "output_tokens": 9, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 40}
    assert es.finish() == b"" and es.feed(chunk({"content": "late"})) == b""


def test_stream_tool_calls_without_indexes() -> None:
    """Some servers send each complete call at index 0: a new id means a new call."""
    es = EventStream("m", "msg_x")
    calls = [{"id": f"c{i}", "function": {"name": "f", "arguments": f'{{"i":{i}}}'}} for i in range(2)]
    raw = es.start() + es.feed({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}) + es.finish()
    evs = events(raw)
    check_order(evs)
    assert [(b["id"], json.loads(b["json"])) for b in blocks(evs)] == [("c0", {"i": 0}), ("c1", {"i": 1})]
    assert sdk_final(raw).stop_reason == "tool_use"


def test_stream_empty_and_length() -> None:
    es = EventStream("m", message_id())
    raw = es.start() + es.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}) + es.finish()
    evs = events(raw)
    check_order(evs)
    assert [n for n, _ in evs] == ["message_start", "message_delta", "message_stop"]
    assert evs[-2][1]["delta"]["stop_reason"] == "max_tokens" and evs[-2][1]["usage"] == {"output_tokens": 0}
    assert evs[0][1]["message"]["id"].startswith("msg_")


# --- errors and count_tokens -------------------------------------------------------------


@pytest.mark.parametrize(("status", "etype"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"),
    (502, "api_error"), (503, "overloaded_error"), (529, "overloaded_error"), (422, "invalid_request_error"),
])
def test_error_body(status: int, etype: str) -> None:
    obj = orjson.loads(error_body(status, "boom"))
    assert obj == {"type": "error", "error": {"type": etype, "message": "boom"}}
    if status != 413:  # Anthropic documents request_too_large; the SDK's ErrorObject union lacks it
        ErrorResponse.model_validate(obj)


def test_error_bodies_match_fixtures_and_sdk_exceptions() -> None:
    for status, name in [(400, "error_400_invalid_request.json"), (529, "error_529_overloaded.json")]:
        real = fixture(f"anthropic/{name}")
        assert orjson.loads(error_body(status, real["error"]["message"])) == {k: real[k] for k in ("type", "error")}
    for status, cls in [(400, anthropic.BadRequestError), (429, anthropic.RateLimitError),
                        (529, anthropic.InternalServerError)]:
        client = sdk_client(lambda _, s=status: httpx.Response(s, content=error_body(s, "nope"),
                                                                headers={"content-type": "application/json"}))
        with pytest.raises(cls) as exc:
            client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert exc.value.body["error"]["type"] == error_type(status)


def test_stream_error_event() -> None:
    es = EventStream("m", "msg_e")
    raw = es.start() + es.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    raw += es.error("Overloaded", "overloaded_error")
    name, data = events(raw)[-1]
    real = (FIX / "anthropic/stream_error_event.sse").read_text().splitlines()
    assert name == real[0][7:] == "error" and data == orjson.loads(real[1][6:])
    ErrorResponse.model_validate(data)
    assert es.finish() == b""  # the stream is over
    headers = {"content-type": "text/event-stream"}
    client = sdk_client(lambda _: httpx.Response(200, content=raw, headers=headers))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        with client.messages.stream(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()


def test_count_tokens_estimate() -> None:
    assert count_tokens(fixture("anthropic/request_basic.json")) == 4  # "Hello, Claude": 13 chars
    tools = fixture("anthropic/request_tools.json")
    assert count_tokens(tools) > count_tokens(tools | {"tools": []}) + 50
    vision = count_tokens(fixture("anthropic/request_vision.json"))
    assert vision == 2 * 1600 + 6  # two images at a flat cost, plus "Describe these images."
    convo = {"system": [{"type": "text", "text": "x" * 40}], "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "y" * 40}]},
    ]}
    call = len(b'{"name":"f","input":{"a":1}}')  # tool input counts as the JSON the model reads
    assert count_tokens(convo) == -(-(40 + call + 40) // 4)
