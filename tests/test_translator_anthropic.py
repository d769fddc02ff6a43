"""The Anthropic Messages translator against the recorded wire-format fixtures (tests/fixtures)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from conftest import FIXTURES

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError
from llm_proxy.providers.anthropic import StreamDecoder, build_request, parse_error, parse_response

FIX = FIXTURES / "anthropic"
MODEL = "claude-sonnet-4-5"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def fixture(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def build(body: dict[str, Any], *, stream: bool = False, max_output_tokens: int | None = None) -> dict[str, Any]:
    call = build_request(body, MODEL, api_key="sk-ant-test", stream=stream, max_output_tokens=max_output_tokens)
    assert call.path == "/v1/messages"
    assert call.headers == {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    assert b"\n" not in call.body and b": " not in call.body  # compact JSON
    return orjson.loads(call.body)


# --- build_request -----------------------------------------------------------------------


def test_basic_request_matches_fixture() -> None:
    out = build({"model": "x", "messages": [{"role": "user", "content": "Hello, Claude"}], "max_tokens": 1024})
    assert out == fixture("request_basic.json")


def test_no_api_key_no_auth_header() -> None:
    call = build_request({"messages": [{"role": "user", "content": "hi"}]}, MODEL, api_key=None, stream=False,
                         max_output_tokens=None)
    assert call.headers == {"anthropic-version": "2023-06-01"}


def test_max_tokens_precedence() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert build({"messages": msgs})["max_tokens"] == 4096
    assert build({"messages": msgs}, max_output_tokens=64000)["max_tokens"] == 64000
    assert build({"messages": msgs, "max_tokens": 50}, max_output_tokens=64000)["max_tokens"] == 50
    both = {"messages": msgs, "max_tokens": 50, "max_completion_tokens": 70}
    assert build(both)["max_tokens"] == 70


def test_system_and_stream_options() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        ],
        "max_tokens": 1024,
        "temperature": 0.7,
        "stop": "\n\nHuman:",
        "user": "user-123",
        "stream": True,
    }
    out = build(body, stream=True)
    want = fixture("request_system_stream.json")
    # The fixture's system carries cache_control (an Anthropic-only field) and a block-list user turn.
    want["system"] = "You are a helpful assistant."
    want["messages"][0]["content"] = "Hello"
    assert out == want


def test_system_developer_hoisted_and_joined() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "A"},
            {"role": "developer", "content": [{"type": "text", "text": "B"}, {"type": "text", "text": "C"}]},
            {"role": "user", "content": "hi"},
        ]
    }
    out = build(body)
    assert out["system"] == "A\n\nB\n\nC"
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_system_cache_control_kept_as_blocks() -> None:
    sys_part = {"type": "text", "text": "You are a helpful assistant.", "cache_control": {"type": "ephemeral"}}
    out = build({"messages": [{"role": "system", "content": [sys_part]}, {"role": "user", "content": "Hello"}]})
    assert out["system"] == fixture("request_system_stream.json")["system"]


def test_stop_list_and_temperature_clamp() -> None:
    out = build({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"], "temperature": 1.8,
                 "top_p": 0.5})
    assert out["stop_sequences"] == ["a", "b"]
    assert out["temperature"] == 1.0 and out["top_p"] == 0.5


def test_vision_request_matches_fixture() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
                            "detail": "high",
                        },
                    },
                    {"type": "text", "text": "Describe these images."},
                ],
            }
        ],
        "max_tokens": 1024,
    }
    assert build(body) == fixture("request_vision.json")


@pytest.mark.parametrize("url", ["data:image/png,notbase64", "ftp://example.com/a.png", "file:///etc/passwd"])
def test_bad_image_url_is_bad_request(url: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    with pytest.raises(ProxyError) as exc:
        build(body)
    assert exc.value.status == 400


def test_tools_request_matches_fixture() -> None:
    want = fixture("request_tools.json")
    tool = want["tools"][0]
    body = {
        "messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}],
        "max_tokens": 1024,
        "tools": [{"type": "function", "function": {"name": tool["name"], "description": tool["description"],
                                                    "parameters": tool["input_schema"]}}],
        "tool_choice": "auto",
    }
    assert build(body) == want


@pytest.mark.parametrize(
    ("choice", "parallel", "want"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, None, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, want: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}],
                            "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = build(body)
    assert out.get("tool_choice") == want
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_round_trip_messages() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "15C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "20C"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "user", "content": "And?"},
        ]
    }
    out = build(body)
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "20C"}]},
                {"type": "text", "text": "Thanks"},
                {"type": "text", "text": "And?"},
            ],
        },
    ]


def test_tool_calls_without_content() -> None:
    body = {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]}
    assert build(body)["messages"][1] == {"role": "assistant",
                                          "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "system", "content": "only system"}]},
        {"messages": [{"role": "function", "content": "x", "name": "f"}]},
        {"messages": [{"role": "user", "content": "x"}], "n": 2},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"},
        {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "extreme"},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
        {"messages": [{"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
         "tool_choice": "sometimes"},
    ],
)
def test_untranslatable_requests_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(ProxyError) as exc:
        build(body)
    assert exc.value.status == 400


def test_thinking_request() -> None:
    want = fixture("request_thinking.json")
    body = {"messages": want["messages"], "max_completion_tokens": 16000, "reasoning_effort": "high",
            "temperature": 0.2}
    out = build(body, stream=True)
    # "high" is 16384, over the client's cap of 16000: the cap holds and the budget halves under it
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8000}
    assert out["max_tokens"] == want["max_tokens"] == 16000
    assert want["thinking"]["budget_tokens"] < want["max_tokens"]
    assert "temperature" not in out  # Anthropic rejects temperature changes with thinking on
    assert out["stream"] is True and out["messages"] == want["messages"]


@pytest.mark.parametrize(
    ("effort", "max_tokens", "catalog", "want_budget", "want_max"),
    [
        ("low", None, None, 1024, 1024 + 4096),
        ("medium", None, 64000, 4096, 64000),
        ("high", None, 64000, 16384, 64000),
        ("high", 8000, 64000, 4000, 8000),  # the client's cap holds; the budget shrinks under it
        ("low", 1000, None, 1024, 2024),  # below Anthropic's minimum budget: grow max_tokens instead
        ("high", None, 8192, 4096, 8192),
    ],
)
def test_thinking_budget_fits_max_tokens(
    effort: str, max_tokens: int | None, catalog: int | None, want_budget: int, want_max: int
) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort}
    if max_tokens:
        body["max_tokens"] = max_tokens
    out = build(body, max_output_tokens=catalog)
    assert out["thinking"]["budget_tokens"] == want_budget
    assert out["max_tokens"] == want_max
    assert 1024 <= out["thinking"]["budget_tokens"] < out["max_tokens"]


def test_reasoning_effort_none_means_no_thinking() -> None:
    assert "thinking" not in build({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "none"})


# --- parse_response ----------------------------------------------------------------------


def test_parse_response_basic() -> None:
    t = parse_response((FIX / "response_basic.json").read_bytes(), MODEL)
    r = t.response
    assert r["id"] == "msg_01VdEjxAP5ahtHKrrRdNBteQ"
    assert r["object"] == "chat.completion" and isinstance(r["created"], int)
    assert r["model"] == "claude-sonnet-4-5-20250929"
    (choice,) = r["choices"]
    assert choice["message"] == {"role": "assistant", "content": fixture("response_basic.json")["content"][0]["text"]}
    assert choice["finish_reason"] == t.finish_reason == "stop"
    assert r["usage"] == {"prompt_tokens": 12, "completion_tokens": 29, "total_tokens": 41,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    assert t.usage == Usage(prompt_tokens=12, completion_tokens=29)


def test_parse_response_tool_use() -> None:
    src = fixture("response_tool_use.json")
    t = parse_response(src, MODEL)
    msg = t.response["choices"][0]["message"]
    assert msg["content"] == src["content"][0]["text"]
    assert msg["tool_calls"] == [{"id": "toolu_01LRmxn9vGM1d2DZSDBowdZ1", "type": "function",
                                  "function": {"name": "updateIssueList", "arguments": "{}"}}]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == src["content"][1]["input"]
    assert t.finish_reason == "tool_calls"
    assert t.usage == Usage(prompt_tokens=602, completion_tokens=93)


def test_parse_response_thinking() -> None:
    t = parse_response((FIX / "response_thinking.json").read_bytes(), MODEL)
    msg = t.response["choices"][0]["message"]
    assert msg["content"] == "925 ÷ 5 = 185"
    assert msg["reasoning_content"] == "925 divided by 5 = 185"
    assert "tool_calls" not in msg
    assert t.usage is not None and (t.usage.prompt_tokens, t.usage.completion_tokens) == (69, 33)


def test_parse_response_cache_tokens_and_stop_reasons() -> None:
    src = fixture("response_basic.json")
    src["usage"].update(input_tokens=10, cache_read_input_tokens=100, cache_creation_input_tokens=20)
    for reason, want in [("max_tokens", "length"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
                         ("refusal", "content_filter"), ("end_turn", "stop")]:
        src["stop_reason"] = reason
        t = parse_response(orjson.dumps(src), MODEL)
        assert t.finish_reason == t.response["choices"][0]["finish_reason"] == want
    assert t.usage == Usage(prompt_tokens=130, completion_tokens=29, cached_tokens=100, cache_write_tokens=20)
    assert t.response["usage"] == {"prompt_tokens": 130, "completion_tokens": 29, "total_tokens": 159,
                                   "prompt_tokens_details": {"cached_tokens": 100}}


def test_parse_response_rejects_non_message() -> None:
    with pytest.raises(ProxyError) as exc:
        parse_response((FIX / "error_529_overloaded.json").read_bytes(), MODEL)
    assert exc.value.status == 502


# --- StreamDecoder -----------------------------------------------------------------------


def decode(name: str, size: int | None) -> tuple[list[dict[str, Any]], StreamDecoder]:
    raw = (FIX / name).read_bytes()
    dec = StreamDecoder(MODEL)
    chunks: list[dict[str, Any]] = []
    pieces = [raw] if size is None else [raw[i : i + size] for i in range(0, len(raw), size)]
    for piece in pieces:
        chunks.extend(dec.feed(piece))
    chunks.extend(dec.finish())
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["created"] == dec.created
        assert set(c) >= {"id", "object", "created", "model", "choices"}
    return chunks, dec


def decoded(name: str) -> tuple[list[dict[str, Any]], StreamDecoder]:
    """Whole, 1-byte and 7-byte feeding must agree (``created`` aside, it is per decoder)."""
    runs = [decode(name, size) for size in (None, 1, 7)]
    norm = [[{k: v for k, v in c.items() if k != "created"} for c in chunks] for chunks, _ in runs]
    assert norm[0] == norm[1] == norm[2]
    for _, dec in runs[1:]:
        assert (dec.usage, dec.finish_reason, dec.error) == (runs[0][1].usage, runs[0][1].finish_reason,
                                                               runs[0][1].error)
    return runs[0]


def text_of(chunks: list[dict[str, Any]], key: str = "content") -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


def test_stream_basic() -> None:
    chunks, dec = decoded("stream_basic.sse")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK" for c in chunks)
    assert all(c["model"] == "claude-3-opus-latest" for c in chunks)
    assert text_of(chunks) == "Hello there!"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0] for c in finish] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    # message_stop has no trailing newline in the fixture: only finish() delivers the usage chunk
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17,
                                   "prompt_tokens_details": {"cached_tokens": 0}}
    assert dec.usage == Usage(prompt_tokens=11, completion_tokens=6)
    assert dec.finish_reason == "stop" and dec.error is None


def test_stream_tool_use() -> None:
    chunks, dec = decoded("stream_tool_use.sse")
    assert text_of(chunks) == "I'll check the current weather in Paris for you."
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert all(tc["index"] == 0 for tc in calls)  # Anthropic's block index is 1; OpenAI counts calls
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"location": "Paris"}
    assert dec.finish_reason == "tool_calls"
    assert dec.usage == Usage(prompt_tokens=377, completion_tokens=65)


def test_stream_two_tool_calls_numbered_by_call() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
            "input_tokens": 5, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 7, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "tool_use", "id": "a", "name": "f", "input": {}}}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "b", "name": "g", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    raw = b"".join(b"event: %s\r\ndata: %s\r\n\r\n" % (e.encode(), orjson.dumps(d)) for e, d in events)
    dec = StreamDecoder(MODEL)
    chunks = dec.feed(raw) + dec.finish()
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(tc["index"], tc.get("id")) for tc in calls] == [(0, "a"), (1, "b"), (1, None)]
    assert dec.finish_reason == "length"
    assert dec.usage == Usage(prompt_tokens=52, completion_tokens=9, cached_tokens=40, cache_write_tokens=7)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 40}


def test_stream_thinking() -> None:
    chunks, dec = decoded("stream_thinking.sse")
    reasoning = text_of(chunks, "reasoning_content")
    assert reasoning == "The previous result was 925. Now I need to divide that by 5.\n\n925 ÷ 5 = 185"
    assert text_of(chunks) == "925 ÷ 5 = 185"
    assert not any("signature" in orjson.dumps(c).decode() for c in chunks)
    assert dec.usage == Usage(prompt_tokens=69, completion_tokens=53)
    assert dec.finish_reason == "stop" and dec.error is None


def test_stream_error_event() -> None:
    chunks, dec = decoded("stream_error_event.sse")
    assert chunks == []
    assert dec.error == {"message": "Overloaded", "type": "api_error", "code": "overloaded_error"}
    assert dec.finish_reason is None


def test_stream_stops_after_error() -> None:
    dec = StreamDecoder(MODEL)
    raw = (FIX / "stream_error_event.sse").read_bytes() + (FIX / "stream_basic.sse").read_bytes()
    assert dec.feed(raw) + dec.finish() == []
    assert dec.error is not None and dec.error["code"] == "overloaded_error"


# --- parse_error -------------------------------------------------------------------------


def test_parse_error_400() -> None:
    e = parse_error(400, (FIX / "error_400_invalid_request.json").read_bytes())
    assert e.status == 400
    assert e.type == "invalid_request_error" and e.code is None
    assert e.message == 'messages: roles must alternate between "user" and "assistant"'


def test_parse_error_529_becomes_503() -> None:
    e = parse_error(529, (FIX / "error_529_overloaded.json").read_bytes())
    assert (e.status, e.type, e.code, e.message) == (503, "api_error", "overloaded_error", "Overloaded")


OPENAI_TYPE = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "billing_error": "insufficient_quota",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "api_error",
    "timeout_error": "api_error",
    "overloaded_error": "api_error",
}


@pytest.mark.parametrize(("status", "atype"), sorted(fixture("errors_by_status.json").items()))
def test_parse_error_by_status(status: str, atype: str) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": atype, "message": "boom"}})
    for data in (body, b"<html>gateway</html>"):  # with the envelope, and with none: same mapping
        e = parse_error(int(status), data)
        assert e.status == (503 if status == "529" else int(status))
        assert e.type == OPENAI_TYPE[atype]
        if atype == "authentication_error":  # the key itself refused, in Anthropic's own word only
            assert e.code == ("invalid_api_key" if data is body else None)
        else:
            assert e.code == (None if atype == e.type else atype)
    assert parse_error(int(status), body).message == "boom"
    assert "gateway" in parse_error(int(status), b"<html>gateway</html>").message
