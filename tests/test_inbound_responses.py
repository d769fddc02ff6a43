"""Responses API <-> chat translation, checked against the fixtures and the openai SDK's own types.

The SDK's pydantic models (``Response``, the ``ResponseStreamEvent`` union) and its stream
accumulator are the oracle: what they accept is what a Responses client can consume.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import FIXTURES
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError
from llm_proxy.inbound.responses import EventStream, from_chat, to_chat

EVENT = TypeAdapter(ResponseStreamEvent)


def load(rel: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / rel).read_bytes())


def chunks(rel: str) -> list[dict[str, Any]]:
    """The ``data:`` payloads of a chat SSE fixture, without ``[DONE]``."""
    out = []
    for line in (FIXTURES / rel).read_text().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(orjson.loads(line[5:]))
    return out


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Responses SSE -> event dicts, checking the ``event:`` name matches the payload's ``type``."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        event = orjson.loads(data[6:])
        assert event["type"] == name[7:]
        events.append(event)
    return events


def run(rel: str, request: dict[str, Any] | None = None, usage: Usage | None = None) -> list[dict[str, Any]]:
    stream = EventStream(request or {"model": "m", "input": "hi"}, "m")
    raw = stream.start() + b"".join(stream.feed(c) for c in chunks(rel)) + stream.finish(usage)
    events = parse_sse(raw)
    for event in events:
        EVENT.validate_python(event)
    seqs = [e["sequence_number"] for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0
    return events


def shape(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of the same type collapsed: the kind of sequence, not its length."""
    return [t for t, _ in itertools.groupby(e["type"] for e in events)]


def fixture_shape(rel: str) -> list[str]:
    raw = (FIXTURES / rel).read_text()
    return shape([{"type": line[7:]} for line in raw.splitlines() if line.startswith("event: ")])


def raises_400(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(ProxyError) as err:
        to_chat(body)
    assert err.value.status == 400 and needle in err.value.message


# ---------------------------------------------------------------- to_chat


def test_to_chat_text() -> None:
    body = load("openai_responses/request_text.json")
    assert to_chat(body) == {"model": "gpt-5.4", "messages": [{"role": "user", "content": body["input"]}]}


def test_to_chat_stream_with_instructions() -> None:
    out = to_chat(load("openai_responses/request_stream.json"))
    assert out["messages"] == [{"role": "system", "content": "You are a helpful assistant."},
                               {"role": "user", "content": "Hello!"}]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_to_chat_vision() -> None:
    body = load("openai_responses/request_vision.json")
    url = body["input"][0]["content"][1]["image_url"]
    assert to_chat(body)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]


def test_to_chat_tools() -> None:
    body = load("openai_responses/request_tools.json")
    out = to_chat(body)
    tool = body["tools"][0]
    assert out["tools"] == [{"type": "function", "function": {
        "name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]}}]
    assert out["tool_choice"] == "auto"
    forced = to_chat({**body, "tool_choice": {"type": "function", "name": "get_current_weather"}})
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "get_current_weather"}}


def test_to_chat_reasoning_and_options() -> None:
    out = to_chat(load("openai_responses/request_reasoning.json"))
    assert out["reasoning_effort"] == "high" and out["model"] == "o3-mini"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = to_chat({"model": "m", "input": "x", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                   "parallel_tool_calls": False, "user": "u1", "metadata": {"k": "v"}, "store": True,
                   "text": {"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}}})
    assert out["max_tokens"] == 50 and out["temperature"] == 0.2 and out["top_p"] == 0.9
    assert out["parallel_tool_calls"] is False and out["user"] == "u1"
    assert "metadata" not in out and "store" not in out
    assert out["response_format"] == {"type": "json_schema",
                                      "json_schema": {"name": "A", "schema": schema, "strict": True}}
    assert to_chat({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in to_chat({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})


def test_to_chat_multi_turn_function_calls() -> None:
    body = {"model": "m", "instructions": "be brief", "input": [
        {"role": "developer", "content": "use tools"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in A and B?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_a", "name": "w", "arguments": '{"c":"A"}'},
        {"type": "function_call", "call_id": "call_b", "name": "w", "arguments": '{"c":"B"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "function_call", "call_id": "call_c", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_c", "output": "ok"},
    ]}
    assert to_chat(body)["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "use tools"},
        {"role": "user", "content": "weather in A and B?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": '{"c":"A"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "w", "arguments": '{"c":"B"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_c", "content": "ok"},
    ]


def test_to_chat_rejects_what_needs_openai() -> None:
    base = {"model": "m", "input": "x"}
    raises_400({**base, "previous_response_id": "resp_1"}, "previous_response_id needs stored response state")
    raises_400({**base, "conversation": "conv_1"}, "send the full input instead")
    raises_400({**base, "background": True}, "background")
    for kind in ("web_search", "file_search", "code_interpreter", "computer_use_preview"):
        raises_400({**base, "tools": [{"type": kind}]}, f"tool type {kind} is only available from OpenAI")
    raises_400({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
               "file_id")
    raises_400({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "stored response state")
    raises_400({"model": "m"}, "input")


# ---------------------------------------------------------------- from_chat


def test_from_chat_basic() -> None:
    request = load("openai_responses/request_text.json")
    out = from_chat(load("openai_chat/response_basic.json"), request)
    resp = Response.model_validate(out)
    assert resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == "Hello! How can I assist you today?"
    assert resp.output[0].id.startswith("msg_")
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (19, 10, 29)


def test_from_chat_tools() -> None:
    request = load("openai_responses/request_tools.json")
    resp = Response.model_validate(from_chat(load("openai_chat/response_tools.json"), request))
    assert resp.output_text == ""
    [call] = resp.output
    assert call.type == "function_call" and call.id and call.id.startswith("fc_")
    assert (call.call_id, call.name) == ("call_abc123", "get_current_weather")
    assert call.arguments == '{\n"location": "Boston, MA"\n}'
    assert resp.tools[0].name == "get_current_weather" and resp.tool_choice == "auto"


def test_from_chat_reasoning() -> None:
    completion = load("deepseek/response_reasoning.json")
    resp = Response.model_validate(from_chat(completion, load("openai_responses/request_reasoning.json")))
    reasoning, message = resp.output
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == completion["choices"][0]["message"]["reasoning_content"]
    assert resp.output_text == completion["choices"][0]["message"]["content"]
    assert resp.usage and resp.usage.output_tokens_details.reasoning_tokens == 315
    assert resp.reasoning and resp.reasoning.effort == "high"


def test_from_chat_length_is_incomplete() -> None:
    completion = load("openai_chat/response_basic.json")
    completion["choices"][0]["finish_reason"] = "length"
    resp = Response.model_validate(from_chat(completion, {"model": "m", "input": "x", "max_output_tokens": 5}))
    assert resp.status == "incomplete" and resp.incomplete_details
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.max_output_tokens == 5


# ---------------------------------------------------------------- EventStream


def test_stream_text() -> None:
    events = run("openai_chat/stream_basic_with_usage.sse")
    assert shape(events) == fixture_shape("openai_responses/stream_text_final.sse")
    expected = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks("openai_chat/stream_basic_with_usage.sse") if c["choices"])
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == expected and text
    assert events[1]["response"]["status"] == "in_progress" and events[1]["response"]["output"] == []
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == expected
    assert final.usage and final.usage.input_tokens == 14 and final.usage.output_tokens == 30
    done = [e for e in events if e["type"] == "response.output_text.done"]
    assert done[0]["text"] == expected


def test_stream_tool_call() -> None:
    source = chunks("openai_chat/stream_tool_call.sse")
    events = run("openai_chat/stream_tool_call.sse")
    assert shape(events) == fixture_shape("openai_responses/stream_function_call_2.sse")
    expected = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                       for c in source if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(e["delta"] for e in deltas) == expected
    added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
    assert added["call_id"] == "call_4XzlGBLtUe9dy3GVNV4jhq7h" and added["name"] == "get_weather"
    assert {e["item_id"] for e in deltas} == {added["id"]}
    final = Response.model_validate(events[-1]["response"])
    [call] = final.output
    assert call.type == "function_call" and call.arguments == expected and call.status == "completed"
    assert final.usage and final.usage.total_tokens == 60


def test_stream_reasoning() -> None:
    source = chunks("deepseek/stream_reasoning.sse")
    events = run("deepseek/stream_reasoning.sse")
    assert shape(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        *fixture_shape("openai_responses/stream_text_final.sse")[2:],
    ]
    thinking = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in source)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in source)
    final = Response.model_validate(events[-1]["response"])
    assert final.output[0].type == "reasoning" and final.output[0].summary[0].text == thinking
    assert final.output_text == text
    assert [e["output_index"] for e in events if e["type"] == "response.output_text.delta"][0] == 1
    assert final.usage and final.usage.output_tokens_details.reasoning_tokens == 205


def test_stream_finish_usage_argument_wins_and_length_is_incomplete() -> None:
    events = run("openai_chat/stream_finish_length.sse", usage=Usage(prompt_tokens=7, completion_tokens=1))
    assert events[-1]["type"] == "response.incomplete"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.incomplete_details
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage and final.usage.input_tokens == 7 and final.output[0].status == "incomplete"


def test_stream_error() -> None:
    stream = EventStream({"model": "m", "input": "x"}, "m")
    raw = stream.start() + stream.feed(chunks("openai_chat/stream_basic_with_usage.sse")[1])
    raw += stream.error("upstream went away")
    events = parse_sse(raw)
    for event in events:
        EVENT.validate_python(event)
    assert events[-1]["type"] == "response.failed"
    resp = Response.model_validate(events[-1]["response"])
    assert resp.status == "failed" and resp.error
    assert (resp.error.code, resp.error.message) == ("server_error", "upstream went away")
    assert stream.finish() == b"" and stream.feed({}) == b""


def test_sdk_client_consumes_the_stream() -> None:
    """The SDK's own stream accumulator rebuilds the same response from our bytes."""
    request = load("openai_responses/request_tools.json")

    def handler(_: httpx.Request) -> httpx.Response:
        stream = EventStream(request, "gpt-4o")
        body = stream.start() + b"".join(stream.feed(c) for c in chunks("openai_chat/stream_tool_call.sse"))
        return httpx.Response(200, content=body + stream.finish(), headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(api_key="k", base_url="http://gw/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    with client.responses.stream(model="gpt-4o", input=request["input"]) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].arguments == '{"city":"New York City"}'


def test_stream_two_tool_calls_after_text() -> None:
    """A new item closes the open one, so items never interleave; whole calls in one delta work too."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    stream = EventStream({"model": "m", "input": "x"}, "m")
    raw = stream.start() + b"".join(stream.feed(c) for c in [
        chunk({"role": "assistant", "content": "Let me check."}),
        call(0, id="call_1", type="function", function={"name": "a", "arguments": '{"x":'}),
        call(0, function={"arguments": "1}"}),
        call(1, id="call_2", type="function", function={"name": "b", "arguments": "{}"}),
        chunk({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
    ]) + stream.finish()
    events = parse_sse(raw)
    for event in events:
        EVENT.validate_python(event)
    opened: set[int] = set()
    for e in events:  # each item's events come between its added and done
        if e["type"] == "response.output_item.added":
            assert not opened
            opened.add(e["output_index"])
        elif e["type"] == "response.output_item.done":
            assert opened == {e["output_index"]}
            opened.clear()
        elif "output_index" in e:
            assert opened == {e["output_index"]}
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Let me check."
    assert [(o.type, getattr(o, "arguments", None)) for o in final.output] == [
        ("message", None), ("function_call", '{"x":1}'), ("function_call", "{}")]
    assert [o.call_id for o in final.output[1:]] == ["call_1", "call_2"]  # type: ignore[union-attr]
    assert final.usage and final.usage.total_tokens == 7


def test_to_chat_content_parts_flatten_outside_user_turns() -> None:
    out = to_chat({"model": "m", "input": [
        {"role": "system", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    ]})
    assert out["messages"] == [{"role": "system", "content": "ab"}, {"role": "user", "content": "hi"}]
    raises_400({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
               "input_file")
