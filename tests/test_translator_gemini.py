"""Gemini translator against real captures: request shape, responses, both stream framings, errors."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from conftest import FIXTURES

from llm_proxy.core.errors import ProxyError
from llm_proxy.providers import gemini
from llm_proxy.providers.gemini import StreamDecoder, build_request, parse_error, parse_response

FIX = FIXTURES / "gemini"
KEY = "AIza-secret-key"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def fixture(name: str) -> Any:
    return orjson.loads((FIX / name).read_bytes())


def build(body: dict[str, Any], model: str = "gemini-2.5-flash", **kw: Any) -> dict[str, Any]:
    call = build_request(body, model, api_key=KEY, stream=kw.pop("stream", False), **kw)
    return orjson.loads(call.body)


# --- build_request ------------------------------------------------------------------------------


def test_basic_request_matches_capture() -> None:
    call = build_request(
        {"model": "x", "messages": [{"role": "user", "content": "What is the capital of France? One word."}],
         "temperature": 0},
        "gemini-2.5-flash", api_key=KEY, stream=False, max_output_tokens=None,
    )
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.headers == {"x-goog-api-key": KEY}
    assert KEY not in call.path
    assert orjson.loads(call.body) == fixture("generate_basic.request.json")
    assert b"\n" not in call.body and b": " not in call.body  # compact


def test_stream_path_uses_alt_sse_and_key_stays_in_header() -> None:
    call = build_request({"messages": [{"role": "user", "content": "hi"}]}, "gemini-2.5-flash",
                         api_key=KEY, stream=True, max_output_tokens=None)
    assert call.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert KEY not in call.path and call.headers["x-goog-api-key"] == KEY
    assert orjson.loads(call.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


SUM_SCHEMA = {"additionalProperties": False, "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"], "type": "object"}


def test_function_call_request_matches_capture() -> None:
    want = fixture("generate_function_call.request.json")
    got = build({
        "messages": [{"role": "system", "content": want["systemInstruction"]["parts"][0]["text"]},
                     {"role": "user", "content": "what is the sum of 1 + 2?"}],
        "tools": [{"type": "function", "function": {"name": "sum", "description": "computes the sum of two numbers",
                                                    "parameters": SUM_SCHEMA}}],
    })
    assert got["contents"] == want["contents"]
    assert got["systemInstruction"]["parts"] == want["systemInstruction"]["parts"]
    decl, wdecl = got["tools"][0]["functionDeclarations"][0], want["tools"][0]["functionDeclarations"][0]
    assert decl == {k: wdecl[k] for k in ("name", "description", "parametersJsonSchema")}


def test_vision_data_url_becomes_inline_data() -> None:
    want = fixture("request_vision_inline_data.json")["contents"][0]["parts"]
    got = build({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "Caption this image."}]}]})
    inline = want[0]["inline_data"]  # the docs' snake_case; the API takes camelCase as well
    assert got["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": inline["mime_type"], "data": inline["data"]}}, want[1]]
    plain = build({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%20there"}}]}]})
    assert plain["contents"][0]["parts"][0]["inlineData"] == {
        "mimeType": "text/plain", "data": base64.b64encode(b"hi there").decode()}


def test_remote_image_url_is_a_bad_request() -> None:
    with pytest.raises(ProxyError) as exc:
        build({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert exc.value.status == 400 and "data: URL" in exc.value.message


def test_full_options_request() -> None:
    want = fixture("request_full_options.json")
    got = build({
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_w1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_w1", "content": '{"temperature_c": 18}'},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Get the weather for a city",
            "parameters": want["tools"][0]["functionDeclarations"][0]["parameters"]}}],
        "tool_choice": "auto", "temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "stop": "END", "n": 1,
        "reasoning_effort": "low",
    })
    assert got["systemInstruction"] == want["systemInstruction"]
    assert got["contents"][:2] == want["contents"][:2]
    # Tool output is wrapped as {"result": ...} (the capture sends the object bare); name from the call id.
    assert got["contents"][2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "get_weather", "response": {"result": {"temperature_c": 18}}}}]}
    assert got["toolConfig"] == want["toolConfig"]
    wdecl = want["tools"][0]["functionDeclarations"][0]
    assert got["tools"][0]["functionDeclarations"][0] == {
        "name": wdecl["name"], "description": wdecl["description"], "parametersJsonSchema": wdecl["parameters"]}
    wgen = {k: v for k, v in want["generationConfig"].items() if k != "responseMimeType"}
    assert got["generationConfig"] == wgen


def test_tool_results_merge_and_plain_text_results() -> None:
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": f"f{i}", "arguments": "{}"}} for i in (1, 2)]
    got = build({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "calling", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "plain text"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "[1, 2]"}]},
    ]}, model="gemini-3-pro-preview")
    model_turn, results = got["contents"][1], got["contents"][2]
    assert model_turn["role"] == "model" and model_turn["parts"][0] == {"text": "calling"}
    # Gemini 3 needs a thoughtSignature on the first call of a replayed turn; ids are never sent.
    assert model_turn["parts"][1]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in model_turn["parts"][2]
    assert "id" not in model_turn["parts"][1]["functionCall"]
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"name": "f1", "response": {"result": "plain text"}}},
        {"functionResponse": {"name": "f2", "response": {"result": [1, 2]}}}]}
    assert len(got["contents"]) == 3
    two = build({"messages": [{"role": "assistant", "tool_calls": calls}]})
    assert all("thoughtSignature" not in p for p in two["contents"][0]["parts"])


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "sum"}}, {"mode": "ANY", "allowedFunctionNames": ["sum"]}),
])
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    got = build({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice})
    assert got["toolConfig"] == {"functionCallingConfig": config}


def test_generation_params_and_formats() -> None:
    gen = build({"messages": [], "max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"], "seed": 7,
                 "presence_penalty": 0.1, "frequency_penalty": 0.2,
                 "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SUM_SCHEMA}},
                 "reasoning_effort": "none"}, max_output_tokens=15)["generationConfig"]
    assert gen == {"maxOutputTokens": 15, "stopSequences": ["a", "b"], "seed": 7, "presencePenalty": 0.1,
                   "frequencyPenalty": 0.2, "responseMimeType": "application/json",
                   "responseJsonSchema": SUM_SCHEMA, "thinkingConfig": {"thinkingBudget": 0}}
    gen = build({"messages": [], "response_format": {"type": "json_object"}, "reasoning_effort": "high"})
    assert gen["generationConfig"] == {"responseMimeType": "application/json",
                                       "thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": True}}


def test_unknown_tool_call_id_is_a_bad_request() -> None:
    with pytest.raises(ProxyError):
        build({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]})


# --- parse_response -----------------------------------------------------------------------------


def test_parse_basic_response() -> None:
    t = parse_response((FIX / "generate_basic.response.json").read_bytes(), "gemini-2.5-flash")
    r = t.response
    assert r["id"] == "chatcmpl-xlWYafXAOKSf1e8PpcODiAg" and r["object"] == "chat.completion"
    assert r["model"] == "gemini-2.5-flash"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "Paris"}
    assert t.finish_reason == r["choices"][0]["finish_reason"] == "stop"
    assert (t.usage.prompt_tokens, t.usage.completion_tokens, t.usage.reasoning_tokens) == (11, 35, 34)
    assert r["usage"]["total_tokens"] == 46  # == totalTokenCount: thoughts are in completion
    assert r["usage"]["completion_tokens_details"] == {"reasoning_tokens": 34}


def test_parse_function_call_response() -> None:
    t = parse_response((FIX / "generate_function_call.response.json").read_bytes(), "gemini-2.5-flash")
    msg = t.response["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [{"id": "call_XTGwabD8KpaxkdUP3MTwoAk_0", "type": "function",
                                  "function": {"name": "sum", "arguments": '{"a":1,"b":2}'}}]
    assert t.finish_reason == "tool_calls"  # Gemini says STOP
    assert t.usage.completion_tokens == 68 and t.usage.total_tokens == 223


def test_parse_thoughts_part_id_and_finish_reasons() -> None:
    data = {"candidates": [{"content": {"parts": [
        {"text": "hmm", "thought": True}, {"text": "answer"},
        {"functionCall": {"id": "fc-9", "name": "f", "args": {}}}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 5, "cachedContentTokenCount": 3, "candidatesTokenCount": 2}}
    t = parse_response(orjson.dumps(data), "gemini-3-pro")
    msg = t.response["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"], msg["tool_calls"][0]["id"]) == ("answer", "hmm", "fc-9")
    assert t.finish_reason == "length" and t.response["model"] == "gemini-3-pro"
    assert t.usage.cached_tokens == 3 and t.usage.completion_tokens == 2
    for reason, want in [("SAFETY", "content_filter"), ("SPII", "content_filter"), ("OTHER", "stop"),
                         ("MALFORMED_FUNCTION_CALL", "stop")]:
        t = parse_response({"candidates": [{"content": {"parts": []}, "finishReason": reason}]}, "m")
        assert t.finish_reason == want
    assert parse_response({"promptFeedback": {"blockReason": "SAFETY"}}, "m").finish_reason == "content_filter"


# --- StreamDecoder ------------------------------------------------------------------------------


def run(name: str, size: int | None) -> tuple[StreamDecoder, list[dict[str, Any]]]:
    data = (FIX / name).read_bytes()
    dec = StreamDecoder("gemini-2.5-flash")
    out: list[dict[str, Any]] = []
    step = size or len(data)
    for i in range(0, len(data), step):
        out += dec.feed(data[i : i + step])
    return dec, out + dec.finish()


def joined(chunks: list[dict[str, Any]], key: str) -> str:
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


SIZES = [None, 1, 5]


@pytest.mark.parametrize("size", SIZES)
def test_stream_single(size: int | None) -> None:
    dec, out = run("stream_alt_sse_single.response.sse", size)
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Paris"}
    assert out[0]["object"] == "chat.completion.chunk" and out[0]["id"] == "chatcmpl-yFWYabnBB8Wg1e8P3ZTdiAY"
    assert out[1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert out[2]["choices"] == [] and out[2]["usage"]["completion_tokens"] == 34
    assert len(out) == 3 and dec.finish_reason == "stop" and dec.error is None
    assert out == run("stream_alt_sse_single.response.sse", None)[1]


@pytest.mark.parametrize("size", SIZES)
def test_stream_thoughts(size: int | None) -> None:
    dec, out = run("stream_alt_sse_thoughts.response.sse", size)
    assert joined(out, "reasoning_content").startswith("**Calculating Prime Sum**")
    assert "**Verifying Prime Sum**" in joined(out, "reasoning_content")
    content = joined(out, "content")
    assert content.startswith("To find the sum") and content.endswith("is 5117.")
    assert "Prime Sum" not in content
    assert sum("role" in c["choices"][0]["delta"] for c in out if c["choices"]) == 1
    # The last usageMetadata, not a sum over 20 cumulative chunks.
    assert (dec.usage.prompt_tokens, dec.usage.reasoning_tokens, dec.usage.completion_tokens) == (51, 1234, 1979)
    assert dec.usage.total_tokens == 2030
    assert out[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 1234
    assert dec.finish_reason == "stop" and out[-2]["choices"][0]["finish_reason"] == "stop"
    assert out == run("stream_alt_sse_thoughts.response.sse", None)[1]


@pytest.mark.parametrize("size", SIZES)
def test_stream_function_calls(size: int | None) -> None:
    dec, out = run("stream_alt_sse_function_call.response.sse", size)
    calls = out[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == [
        (0, "sum", {"a": 2, "b": 3}), (1, "sum", {"a": 4, "b": 5}), (2, "sum", {"a": 6, "b": 7})]
    assert len({c["id"] for c in calls}) == 3 and all(c["type"] == "function" for c in calls)
    assert dec.finish_reason == "tool_calls" and out[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert dec.usage.completion_tokens == 54 + 77 and dec.usage.reasoning_tokens == 77
    assert out == run("stream_alt_sse_function_call.response.sse", None)[1]


@pytest.mark.parametrize("size", SIZES)
def test_stream_json_array(size: int | None) -> None:
    dec, out = run("stream_json_array.txt", size)
    content = joined(out, "content")
    assert content.startswith("I can help you with that! However, I don't have access")
    assert '"London, UK" or "New York City, USA")' in content and content.endswith("the current weather for you!")
    assert dec.usage.prompt_tokens == 29 and dec.usage.completion_tokens == 115 + 199
    assert dec.usage.reasoning_tokens == 199 and dec.finish_reason == "stop"
    assert len([c for c in out if c["choices"] and c["choices"][0]["delta"].get("content")]) == 4
    assert out == run("stream_json_array.txt", None)[1]


def test_json_array_splitter_handles_braces_and_escapes_in_strings() -> None:
    objs = [{"candidates": [{"content": {"parts": [{"text": t}]}}]} for t in ['a "{[}"\\', "}]", "\\\"{"]]
    raw = b"  [" + b" ,\n ".join(orjson.dumps(o) for o in objs) + b"]\n"
    for size in (1, 2, 3, 7):
        dec = StreamDecoder("m")
        out = [c for i in range(0, len(raw), size) for c in dec.feed(raw[i : i + size])]
        assert joined(out, "content") == 'a "{[}"\\}]\\"{'


def test_stream_midstream_error_in_both_framings() -> None:
    err = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    for raw in (b"data: " + orjson.dumps(err) + b"\r\n\r\n", b"[" + orjson.dumps(err) + b"]"):
        dec = StreamDecoder("m")
        assert dec.feed(raw) + dec.finish() == []
        assert dec.error == {"message": "The model is overloaded.", "type": "api_error", "param": None,
                             "code": "unavailable"}


# --- parse_error --------------------------------------------------------------------------------


def test_error_bad_key_is_401() -> None:
    e = parse_error(400, (FIX / "error_400_api_key_invalid.json").read_bytes())
    assert (e.status, e.type, e.code) == (401, "authentication_error", "invalid_api_key")
    assert e.message.startswith("API key not valid")


def test_error_429_keeps_retry_delay() -> None:
    raw = (FIX / "error_429_resource_exhausted.json").read_bytes()
    e = parse_error(429, raw)
    assert (e.status, e.type, e.code) == (429, "rate_limit_error", "resource_exhausted")
    assert "34.4s" in e.message and gemini.retry_delay(raw) == 34.4
    assert parse_error(429, b"[" + raw + b"]").status == 429  # JSON-array stream wraps errors


def test_errors_by_status() -> None:
    types = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
             429: "rate_limit_error", 500: "api_error", 503: "api_error", 504: "api_error"}
    for status, names in fixture("errors_by_status.json").items():
        for name in names:
            body = orjson.dumps({"error": {"code": int(status), "message": "m", "status": name}})
            e = parse_error(int(status), body)
            assert (e.status, e.type, e.code) == (int(status), types[int(status)], name.lower())


def test_error_non_json_body() -> None:
    e = parse_error(502, b"<html>Bad Gateway</html>")
    assert e.status == 502 and e.type == "api_error" and "Bad Gateway" in e.message
