"""Ollama native /api/chat translator against the recorded and documented fixtures."""

from __future__ import annotations

from typing import Any

import conftest
import orjson
import pytest

from llm_proxy.core.errors import ProxyError
from llm_proxy.core.wire import UpstreamCall
from llm_proxy.providers import ollama

FIXTURES = conftest.FIXTURES / "ollama"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def build(body: dict[str, Any], model: str = "llama3.2", **kw: Any) -> tuple[UpstreamCall, dict[str, Any]]:
    kw = {"api_key": None, "stream": False, "max_output_tokens": None, **kw}
    call = ollama.build_request(body, model, **kw)
    return call, orjson.loads(call.body)


# --- build_request ---------------------------------------------------------------------------


def test_build_basic_matches_fixture() -> None:
    expected = fixture("api_chat_request.json")
    call, sent = build({"model": "alias", "messages": expected["messages"]}, stream=True)
    assert call.path == "/api/chat"
    assert call.headers == {}
    assert sent == {**expected, "stream": True}  # stream is always explicit: Ollama defaults to true
    assert b" " not in call.body.replace(b"why is the sky blue?", b"")  # compact JSON


def test_build_tools_matches_fixture() -> None:
    expected = fixture("api_chat_tools_request.json")
    body = {"model": "x", "messages": expected["messages"], "tools": expected["tools"], "tool_choice": "auto"}
    _, sent = build(body, stream=True)
    assert sent == expected


def test_build_vision_matches_fixture() -> None:
    expected = fixture("api_chat_vision_request.json")
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
    ]
    _, sent = build({"messages": [{"role": "user", "content": content}]}, model="gemma4")
    assert sent == expected


def test_remote_image_rejected() -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(ProxyError) as exc:
        build({"messages": [{"role": "user", "content": content}]})
    assert exc.value.status == 400
    assert "data: URL" in exc.value.message


def test_auth_header_only_with_key() -> None:
    call, _ = build({"messages": []}, api_key="ollama-cloud-key")
    assert call.headers == {"authorization": "Bearer ollama-cloud-key"}


def test_tool_round_trip_messages() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "weather in tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "22C sunny"},
    ]
    _, sent = build({"messages": messages})
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather in tokyo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "22C sunny", "tool_name": "get_weather"},
    ]


def test_options_format_and_think() -> None:
    body = {
        "messages": [], "temperature": 0.2, "top_p": 0.9, "max_tokens": 10, "max_completion_tokens": 20,
        "stop": "END", "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.3,
        "response_format": {"type": "json_object"}, "reasoning_effort": "high",
    }
    _, sent = build(body, model="qwen3")
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 20, "stop": ["END"],
                               "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.3}
    assert sent["format"] == "json"
    assert sent["think"] is True
    _, sent = build({"messages": [], "reasoning_effort": "medium"}, model="gpt-oss:20b")
    assert sent["think"] == "medium"
    _, sent = build({"messages": [], "reasoning_effort": "none"}, model="qwen3")
    assert sent["think"] is False
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    _, sent = build({"messages": [], "response_format": fmt, "stop": ["a", "b"]})
    assert sent["format"] == schema
    assert sent["options"] == {"stop": ["a", "b"]}


def test_max_output_tokens_is_only_a_default() -> None:
    _, sent = build({"messages": []}, max_output_tokens=4096)
    assert sent["options"] == {"num_predict": 4096}
    _, sent = build({"messages": [], "max_tokens": 5}, max_output_tokens=4096)
    assert sent["options"] == {"num_predict": 5}


# --- parse_response --------------------------------------------------------------------------


def test_parse_response_fixture() -> None:
    t = ollama.parse_response((FIXTURES / "api_chat_response.json").read_bytes(), "llama3.2")
    r = t.response
    assert r["object"] == "chat.completion" and r["model"] == "llama3.2"
    assert r["id"].startswith("chatcmpl-")
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "Hello! How are you today?"}
    assert r["choices"][0]["finish_reason"] == "stop" == t.finish_reason  # fixture has no done_reason
    assert r["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324}
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (26, 298)


def test_parse_response_tools_thinking_length() -> None:
    data = {
        "model": "qwen3", "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 9,
        "message": {"role": "assistant", "content": "", "thinking": "hmm",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}},
                                   {"function": {"name": "g", "arguments": {}}}]},
    }
    t = ollama.parse_response(orjson.dumps(data), "qwen3")
    msg = t.response["choices"][0]["message"]
    assert msg["content"] is None and msg["reasoning_content"] == "hmm"
    assert [c["id"] for c in msg["tool_calls"]] == ["call_0", "call_1"]
    assert orjson.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert t.finish_reason == "tool_calls"
    data = {"message": {"role": "assistant", "content": "abc"}, "done": True, "done_reason": "length"}
    assert ollama.parse_response(data, "m").finish_reason == "length"


# --- StreamDecoder ---------------------------------------------------------------------------


def decode(raw: bytes, size: int | None) -> tuple[list[dict[str, Any]], ollama.StreamDecoder]:
    dec = ollama.StreamDecoder("llama3.2")
    chunks: list[dict[str, Any]] = []
    step = size or len(raw) or 1
    for i in range(0, len(raw), step):
        chunks.extend(dec.feed(raw[i : i + step]))
    chunks.extend(dec.finish())
    return chunks, dec


def strip_ids(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


@pytest.mark.parametrize("name", ["api_chat_stream.ndjson", "api_chat_tools_stream.ndjson"])
def test_stream_chunking_invariant(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    whole, _ = decode(raw, None)
    assert len({c["id"] for c in whole}) == 1
    for size in (1, 3):
        assert strip_ids(decode(raw, size)[0]) == strip_ids(whole)
    assert strip_ids(decode(raw.replace(b"\n", b"\r\n\n"), 3)[0]) == strip_ids(whole)


def test_stream_text() -> None:
    chunks, dec = decode((FIXTURES / "api_chat_stream.ndjson").read_bytes(), 3)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "The"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "The sky"
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}
    assert dec.finish_reason == "stop" and dec.error is None
    assert (dec.usage.prompt_tokens, dec.usage.completion_tokens) == (26, 282)


def test_stream_tool_calls() -> None:
    chunks, dec = decode((FIXTURES / "api_chat_tools_stream.ndjson").read_bytes(), 1)
    expected = orjson.loads((FIXTURES / "api_chat_tools_stream.ndjson").read_bytes().split(b"\n")[0])
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function"
    assert calls[0]["id"] == expected["message"]["tool_calls"][0]["id"]  # upstream id kept when sent
    assert calls[0]["function"]["name"] == "get_weather"
    args = calls[0]["function"]["arguments"]
    assert isinstance(args, str)
    assert orjson.loads(args) == expected["message"]["tool_calls"][0]["function"]["arguments"]
    assert dec.finish_reason == "tool_calls"  # Ollama says "stop"
    assert (dec.usage.prompt_tokens, dec.usage.completion_tokens) == (169, 15)


def test_stream_tool_index_increments_and_thinking() -> None:
    lines = [
        {"message": {"role": "assistant", "content": "", "thinking": "let me see"}, "done": False},
        {"message": {"role": "assistant", "content": "",
                     "tool_calls": [{"function": {"name": "a", "arguments": {"q": 1}}}]}, "done": False},
        {"message": {"role": "assistant", "content": "",
                     "tool_calls": [{"function": {"name": "b", "arguments": {}}}]}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
         "eval_count": 3},
    ]
    chunks, dec = decode(b"".join(orjson.dumps(x) + b"\n" for x in lines), 2)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "reasoning_content": "let me see"}
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["id"], c["function"]["arguments"]) for c in calls] == [
        (0, "call_0", '{"q":1}'), (1, "call_1", "{}")]
    assert dec.finish_reason == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}


def test_stream_error_midstream() -> None:
    raw = (FIXTURES / "api_chat_stream.ndjson").read_bytes().split(b"\n")
    data = raw[0] + b"\n" + b'{"error":"an error was encountered while running the model"}\n' + raw[1] + b"\n"
    chunks, dec = decode(data, 3)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["The"]  # nothing after the error
    assert dec.error == {"message": "an error was encountered while running the model", "type": "api_error",
                         "param": None, "code": None}
    assert dec.usage is None and dec.finish_reason is None


def test_stream_trailing_line_without_newline() -> None:
    raw = (FIXTURES / "api_chat_stream.ndjson").read_bytes().rstrip(b"\n")
    chunks, dec = decode(raw, 5)
    assert dec.finish_reason == "stop" and dec.error is None
    assert chunks[-1]["usage"]["total_tokens"] == 308


def test_stream_cut_short_is_an_error() -> None:
    raw = (FIXTURES / "api_chat_stream.ndjson").read_bytes().split(b"\n")[0] + b"\n"
    chunks, dec = decode(raw, None)
    assert len(chunks) == 1 and dec.error is not None and dec.usage is None


# --- errors and discovery ----------------------------------------------------------------------


def test_parse_error_model_not_found() -> None:
    err = ollama.parse_error(404, (FIXTURES / "error_404_model_not_found.json").read_bytes())
    assert (err.status, err.type, err.code) == (404, "not_found_error", "model_not_found")
    assert err.message == "model 'llama3.2' not found"


def test_parse_error_other_statuses() -> None:
    err = ollama.parse_error(400, b'{"error":"registry.ollama.ai/library/gemma does not support tools"}')
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", None)
    err = ollama.parse_error(502, b"<html>bad gateway</html>")
    assert (err.status, err.type) == (502, "api_error")
    assert "bad gateway" in err.message
    assert ollama.parse_error(429, b'{"error":"too many requests"}').type == "rate_limit_error"


def test_parse_tags() -> None:
    data = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":1},{"name":"gpt-oss:20b"}]}'
    assert ollama.parse_tags(data) == ["llama3.2:latest", "gpt-oss:20b"]
    assert ollama.parse_tags(b"not json") == []
    assert ollama.parse_tags(b'{"models":[]}') == []


def test_parse_response_unreadable() -> None:
    with pytest.raises(ProxyError) as exc:
        ollama.parse_response(b'{"error":"model runner has unexpectedly stopped"}', "m")
    assert (exc.value.status, exc.value.message) == (502, "model runner has unexpectedly stopped")
