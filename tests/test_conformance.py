"""Cross-format conformance: every wire format the gateway speaks, the same invariants.

``FORMATS`` lists, per provider wire format, the recorded streams and non-streaming responses
in ``tests/fixtures`` with the facts read from each file by hand (written as literals, the
file named beside them). Each stream is turned into OpenAI ``chat.completion.chunk`` dicts — by
SSE-decoding the pass-through bytes (OpenAI-compatible upstreams) or by the format's
``StreamDecoder`` (native translators) — and then checked generically: text survives being split
over deltas, tool-call arguments reassemble by index into the expected JSON object, usage
(reasoning and cached tokens included) is preserved, the finish reason is in OpenAI's vocabulary.
Every stream is fed whole, in 1-byte and in 7-byte pieces, and must decode identically.

A provider type added to ``ProviderConfig.type`` without an entry here (and fixtures on disk)
fails ``test_every_provider_type_has_a_format``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from conftest import FIXTURES

from llm_proxy.core.context import Usage
from llm_proxy.core.sse import SSEDecoder
from llm_proxy.providers import FORMATS as WIRE_FORMATS
from llm_proxy.providers import wire_format
from llm_proxy.providers.openai import ChatStreamMeter, parse_chat_response, upstream_error, usage_from

MODEL = "conformance-model"

# What an OpenAI client may see as a finish reason (``function_call`` is legacy: never produced).
FINISH = frozenset({"stop", "length", "tool_calls", "content_filter"})
# OpenAI error types a client SDK branches on (``insufficient_quota``/``server_error`` are OpenAI's own).
ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "conflict_error",
    "rate_limit_error", "insufficient_quota", "api_error", "server_error",
})


@dataclass(frozen=True)
class Clip:
    """A text too long to spell out: its length, how it starts and how it ends."""

    length: int
    head: str
    tail: str


@dataclass(frozen=True)
class Expect:
    text: str | Clip  # the whole assistant text ("" when there is none)
    usage: tuple[int, int, int, int]  # (prompt, completion, reasoning, cached) in OpenAI's meaning
    finish: str  # in OpenAI's vocabulary
    reasoning: str | None = None  # how the reasoning text starts; None: no reasoning text at all
    tools: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, arguments object) by tool-call index


@dataclass(frozen=True)
class ErrorCase:
    fixture: str
    http_status: int  # the status the upstream answered with
    status: int  # what the client must get
    type: str
    code: str | None


@dataclass(frozen=True)
class Format:
    wire: str  # "openai" (bytes pass through) or the native translator module's name
    streams: dict[str, Expect] = field(default_factory=dict)
    responses: dict[str, Expect] = field(default_factory=dict)
    error: ErrorCase | None = None


# OpenAI-compatible vendors with a folder of their own (streams and responses): the "openai" wire.
OPENAI_COMPATIBLE = {"deepseek"}

FORMATS: dict[str, Format] = {
    "openai": Format(
        wire="openai",
        streams={
            # openai_chat/stream_basic_with_usage.sse: 31 text deltas, finish stop, include_usage chunk
            "openai_chat/stream_basic_with_usage.sse": Expect(
                text="I'm unable to provide real-time weather updates. To get the current weather in San "
                "Francisco, I recommend checking a reliable weather website or a weather app.",
                usage=(14, 30, 0, 0), finish="stop"),
            # openai_chat/stream_tool_call.sse: get_weather, arguments in 7 fragments
            "openai_chat/stream_tool_call.sse": Expect(
                text="", usage=(44, 16, 0, 0), finish="tool_calls",
                tools=(("get_weather", {"city": "New York City"}),)),
            # openai_chat/stream_finish_length.sse: max_tokens=1
            "openai_chat/stream_finish_length.sse": Expect(text='{"', usage=(79, 1, 0, 0), finish="length"),
        },
        responses={
            # openai_chat/response_basic.json
            "openai_chat/response_basic.json": Expect(
                text="Hello! How can I assist you today?", usage=(19, 10, 0, 0), finish="stop"),
            # openai_chat/response_tools.json: content null, arguments "{\n\"location\": \"Boston, MA\"\n}"
            "openai_chat/response_tools.json": Expect(
                text="", usage=(82, 17, 0, 0), finish="tool_calls",
                tools=(("get_current_weather", {"location": "Boston, MA"}),)),
            # openai_chat/response_vision.json
            "openai_chat/response_vision.json": Expect(
                text="The image shows a wooden boardwalk path running through a lush green field or meadow. "
                "The sky is bright blue with some scattered clouds, giving the scene a serene and peaceful "
                "atmosphere. Trees and shrubs are visible in the background.",
                usage=(1117, 46, 0, 0), finish="stop"),
        },
        # openai_chat/error_429_insufficient_quota.json: already OpenAI-shaped, kept as is
        error=ErrorCase("openai_chat/error_429_insufficient_quota.json", 429, 429,
                        "insufficient_quota", "insufficient_quota"),
    ),
    "deepseek": Format(
        wire="openai",
        streams={
            # deepseek/stream_reasoning.sse: reasoning_content deltas, then content; 205 of 219 are reasoning
            "deepseek/stream_reasoning.sse": Expect(
                text='The word "strawberry" contains three "r"s.', usage=(18, 219, 205, 0), finish="stop",
                reasoning='We need to count the number of the letter "r" in the word "strawberry".'),
            # deepseek/stream_text.sse: 1855 chars over ~400 deltas, cut by max_tokens
            "deepseek/stream_text.sse": Expect(
                text=Clip(1855, "## **Holiday Name:** Starlight Remembrance\n\n**Date:** The Saturday nearest",
                          "observe 15 minutes of silent looking at"),
                usage=(13, 400, 0, 0), finish="length"),
        },
        responses={
            # deepseek/response_reasoning.json: prompt_cache_hit_tokens 0, reasoning_tokens 315
            "deepseek/response_reasoning.json": Expect(
                text='The word "strawberry" contains three instances of the letter "r": one after the "t" '
                'and two before the "y".',
                usage=(18, 345, 315, 0), finish="stop",
                reasoning="We are asked: \"How many 'r's are in the word 'strawberry'?\""),
            # deepseek/response_text.json: 1375 chars, finish length
            "deepseek/response_text.json": Expect(
                text=Clip(1375, "## **Holiday Name: Gratitude of Small Things Day (GST Day)**",
                          "Instead of lavish presents, people exchange"),
                usage=(13, 300, 0, 0), finish="length"),
        },
        # deepseek/error_401_authentication.json: OpenAI-shaped envelope
        error=ErrorCase("deepseek/error_401_authentication.json", 401, 401,
                        "authentication_error", "invalid_request_error"),
    ),
    "anthropic": Format(
        wire="anthropic",
        streams={
            # anthropic/stream_basic.sse: 3 text_deltas, input 11 / output 6, no final blank line
            "anthropic/stream_basic.sse": Expect(text="Hello there!", usage=(11, 6, 0, 0), finish="stop"),
            # anthropic/stream_thinking.sse: thinking deltas + signature, then text; output_tokens 53
            "anthropic/stream_thinking.sse": Expect(
                text="925 ÷ 5 = 185", usage=(69, 53, 0, 0), finish="stop",
                reasoning="The previous result was 925. Now I need to divide that by 5.\n\n925 ÷ 5 = 185"),
            # anthropic/stream_tool_use.sse: text block, then tool_use with partial_json fragments
            "anthropic/stream_tool_use.sse": Expect(
                text="I'll check the current weather in Paris for you.", usage=(377, 65, 0, 0),
                finish="tool_calls", tools=(("get_weather", {"location": "Paris"}),)),
        },
        responses={
            # anthropic/response_basic.json
            "anthropic/response_basic.json": Expect(
                text="Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything "
                "I can help you with?", usage=(12, 29, 0, 0), finish="stop"),
            # anthropic/response_thinking.json: thinking block + text block
            "anthropic/response_thinking.json": Expect(
                text="925 ÷ 5 = 185", usage=(69, 33, 0, 0), finish="stop",
                reasoning="925 divided by 5 = 185"),
            # anthropic/response_tool_use.json: text + tool_use with input {}, stop_reason tool_use
            "anthropic/response_tool_use.json": Expect(
                text=Clip(255, "<thinking>\nThe updateIssueList tool was provided",
                          "Okay, I will update the current issue list:"),
                usage=(602, 93, 0, 0), finish="tool_calls", tools=(("updateIssueList", {}),)),
        },
        # anthropic/error_529_overloaded.json: 529 -> 503 (retryable), overloaded_error kept as code
        error=ErrorCase("anthropic/error_529_overloaded.json", 529, 503, "api_error", "overloaded_error"),
    ),
    "gemini": Format(
        wire="gemini",
        streams={
            # gemini/stream_alt_sse_single.response.sse: one CRLF-framed chunk, thoughtsTokenCount 33
            "gemini/stream_alt_sse_single.response.sse": Expect(
                text="Paris", usage=(11, 34, 33, 0), finish="stop"),
            # gemini/stream_alt_sse_thoughts.response.sse: thought parts, then 980 chars of answer;
            # last usageMetadata: prompt 51, candidates 745, thoughts 1234
            "gemini/stream_alt_sse_thoughts.response.sse": Expect(
                text=Clip(980, "To find the sum of the first 50 prime numbers, I first need to list them",
                          "The sum of the first 50 prime numbers is 5117."),
                usage=(51, 1979, 1234, 0), finish="stop", reasoning="**Calculating Prime Sum**"),
            # gemini/stream_alt_sse_function_call.response.sse: three whole functionCall parts, STOP
            "gemini/stream_alt_sse_function_call.response.sse": Expect(
                text="", usage=(171, 131, 77, 0), finish="tool_calls",
                tools=(("sum", {"a": 2, "b": 3}), ("sum", {"a": 4, "b": 5}), ("sum", {"a": 6, "b": 7}))),
            # gemini/stream_json_array.txt: 4 array elements; last usage prompt 29, candidates 115, thoughts 199
            "gemini/stream_json_array.txt": Expect(
                text="I can help you with that! However, I don't have access to real-time information or "
                "your current location.\n\nTo tell you about the weather, I'll need to know:\n\n*   **What "
                'city and country** are you interested in? (e.g., "London, UK" or "New York City, USA")\n'
                '*   **What state or province** too, if applicable (e.g., "Portland, Oregon, USA")\n\n'
                "Once you tell me the location, I can look up the current weather for you!",
                usage=(29, 314, 199, 0), finish="stop"),
        },
        responses={
            # gemini/generate_basic.response.json: candidates 1 + thoughts 34
            "gemini/generate_basic.response.json": Expect(text="Paris", usage=(11, 35, 34, 0), finish="stop"),
            # gemini/generate_function_call.response.json: functionCall sum{a:1,b:2}, finishReason STOP
            "gemini/generate_function_call.response.json": Expect(
                text="", usage=(155, 68, 50, 0), finish="tool_calls", tools=(("sum", {"a": 1, "b": 2}),)),
        },
        # gemini/error_429_resource_exhausted.json: RESOURCE_EXHAUSTED with RetryInfo
        error=ErrorCase("gemini/error_429_resource_exhausted.json", 429, 429,
                        "rate_limit_error", "resource_exhausted"),
    ),
    "ollama": Format(
        wire="ollama",
        streams={
            # ollama/api_chat_stream.ndjson: "The" + " sky", done_reason stop, prompt_eval 26 / eval 282
            "ollama/api_chat_stream.ndjson": Expect(text="The sky", usage=(26, 282, 0, 0), finish="stop"),
            # ollama/api_chat_tools_stream.ndjson: whole tool call, arguments an object; done_reason stop
            "ollama/api_chat_tools_stream.ndjson": Expect(
                text="", usage=(169, 15, 0, 0), finish="tool_calls",
                tools=(("get_weather", {"city": "Tokyo"}),)),
        },
        responses={
            # ollama/api_chat_response.json: no done_reason, prompt_eval 26 / eval 298
            "ollama/api_chat_response.json": Expect(
                text="Hello! How are you today?", usage=(26, 298, 0, 0), finish="stop"),
        },
        # ollama/error_404_model_not_found.json: {"error": "model 'llama3.2' not found"}
        error=ErrorCase("ollama/error_404_model_not_found.json", 404, 404, "not_found_error", "model_not_found"),
    ),
}

# OpenAI-compatible vendors recorded only as one non-streaming response each (pass-through side).
VENDOR_RESPONSES: dict[str, Expect] = {
    # xai/response_text.json: completion_tokens 2 but total_tokens 334 = 12 + 2 + 320: xAI's
    # completion_tokens EXCLUDES its 320 reasoning tokens; OpenAI's meaning includes them (322).
    "xai/response_text.json": Expect(
        text="Grok", usage=(12, 322, 320, 2), finish="stop",
        reasoning='First, the user said: "Say a single word."'),
    # moonshot/response_text.json (SYNTHETIC): no cache or reasoning counts
    "moonshot/response_text.json": Expect(text="Hello, world!", usage=(9, 5, 0, 0), finish="stop"),
}

# Mid-stream errors after HTTP 200: (fixture, wire, expected OpenAI error type)
STREAM_ERRORS = {
    "openai_chat/stream_error_midstream.sse": ("openai", "server_error"),  # data: {"error": {...}}
    "anthropic/stream_error_event.sse": ("anthropic", "api_error"),  # event: error, overloaded_error
}


def _provider_types() -> set[str]:
    """The provider ``type`` values config accepts: exactly the registered wire formats."""
    return set(WIRE_FORMATS)


def _cases(kind: str) -> list[Any]:
    return [pytest.param(name, fixture, expect, id=f"{name}:{fixture.split('/', 1)[1]}")
            for name, fmt in FORMATS.items() for fixture, expect in getattr(fmt, kind).items()]


# --- coverage: every format has fixtures ------------------------------------------------------------


def test_every_provider_type_has_a_format() -> None:
    types = _provider_types()
    assert types
    assert set(FORMATS) == types | OPENAI_COMPATIBLE
    assert {fmt.wire for fmt in FORMATS.values()} == set(WIRE_FORMATS) == types
    for name, fmt in FORMATS.items():
        assert fmt.wire == ("openai" if name == "openai" or name in OPENAI_COMPATIBLE else name), name


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_has_fixtures_on_disk(name: str) -> None:
    fmt = FORMATS[name]
    assert fmt.streams, f"{name}: no stream fixture"
    assert fmt.responses, f"{name}: no non-streaming response fixture"
    listed = [*fmt.streams, *fmt.responses] + ([fmt.error.fixture] if fmt.error else [])
    missing = [f for f in listed if not (FIXTURES / f).is_file()]
    assert not missing, f"{name}: fixtures listed but not on disk: {missing}"
    if name in _provider_types():
        assert fmt.error is not None, f"{name}: no error fixture"


def test_vendor_fixtures_on_disk() -> None:
    missing = [f for f in [*VENDOR_RESPONSES, *STREAM_ERRORS] if not (FIXTURES / f).is_file()]
    assert not missing


# --- streams ----------------------------------------------------------------------------------------


@dataclass
class Run:
    chunks: list[dict[str, Any]]
    usage: Usage | None  # what the relay reads for metering (decoder.usage / meter.usage)
    finish_reason: str | None
    error: dict[str, Any] | None


def _pieces(data: bytes, size: int | None) -> Iterable[bytes]:
    if size is None:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


def _run_openai(pieces: Iterable[bytes]) -> Run:
    """The pass-through path: SSE framing, the relay's meter, and the chunks a client parses."""
    sse, meter, chunks = SSEDecoder(), ChatStreamMeter(), []
    done = False

    def handle(events: list[Any]) -> None:
        nonlocal done
        for ev in events:
            assert not done, "an event after data: [DONE]"
            if ev.data == b"[DONE]":
                done = True
                continue
            usage_only = meter.feed(ev.data)
            chunk = orjson.loads(ev.data)
            assert usage_only == (chunk.get("choices") == [] and chunk.get("usage") is not None)
            chunks.append(chunk)

    for piece in pieces:
        handle(sse.feed(piece))
    handle(sse.flush())
    if meter.error is None:
        assert done, "stream ended without data: [DONE]"
    return Run(chunks, meter.usage, meter.finish_reason, meter.error)


def _run_native(wire: str, pieces: Iterable[bytes]) -> Run:
    decoder = wire_format(wire).stream_decoder(MODEL)
    chunks = [c for piece in pieces for c in decoder.feed(piece)]
    chunks += decoder.finish()
    return Run(chunks, decoder.usage, decoder.finish_reason, decoder.error)


def _run(wire: str, data: bytes, size: int | None) -> Run:
    pieces = _pieces(data, size)
    return _run_openai(pieces) if wire == "openai" else _run_native(wire, pieces)


def _usage_tuple(u: Usage | None) -> tuple[int, int, int, int] | None:
    return None if u is None else (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.cached_tokens)


def _check_text(got: str, want: str | Clip) -> None:
    if isinstance(want, Clip):
        assert (len(got), got[: len(want.head)], got[len(got) - len(want.tail) :]) == (
            want.length, want.head, want.tail)
    else:
        assert got == want


def _check_reasoning(got: str, want: str | None) -> None:
    if want is None:
        assert got == "", f"unexpected reasoning text {got[:80]!r}"
    else:
        assert got.startswith(want), f"reasoning {got[:80]!r} does not start with {want!r}"


def _check_usage_dict(u: Any, want: tuple[int, int, int, int], where: str) -> None:
    assert isinstance(u, dict), f"{where}: no usage object"
    assert _usage_tuple(usage_from(u)) == want, f"{where}: usage {u}"
    assert u.get("total_tokens") == want[0] + want[1], f"{where}: total_tokens {u.get('total_tokens')} != prompt + completion"


def _check_usage(u: Usage | None, want: tuple[int, int, int, int], where: str) -> None:
    got = _usage_tuple(u)
    assert got == want, f"{where}: (prompt, completion, reasoning, cached) {got} != {want}"
    assert u is not None and u.reasoning_tokens <= u.completion_tokens and u.cached_tokens <= u.prompt_tokens


def _assemble_stream(wire: str, run: Run, want: Expect) -> None:
    """The generic invariants of one decoded stream against the expected facts."""
    assert run.error is None, f"unexpected stream error {run.error}"
    chunks = run.chunks
    assert chunks, "no chunks"
    ids = {c.get("id") for c in chunks}
    assert len(ids) == 1 and isinstance(next(iter(ids)), str) and next(iter(ids)), f"chunk ids {ids}"
    text, reasoning, finishes = [], [], []
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        assert c.get("object") == "chat.completion.chunk"
        assert isinstance(c.get("created"), int) and isinstance(c.get("model"), str)
        assert isinstance(c.get("choices"), list)
        for choice in c["choices"]:
            assert choice.get("index") == 0, "one candidate expected"
            delta = choice.get("delta")
            assert isinstance(delta, dict)
            if delta.get("content"):
                text.append(delta["content"])
            if delta.get("reasoning_content") or delta.get("reasoning"):
                reasoning.append(delta.get("reasoning_content") or delta["reasoning"])
            for tc in delta.get("tool_calls") or ():
                idx = tc["index"]
                fn = tc.get("function") or {}
                if idx not in calls:  # the first delta of a call names it
                    assert tc.get("id") and tc.get("type") == "function" and fn.get("name"), f"tool call {tc}"
                    calls[idx] = {"name": fn["name"], "args": []}
                else:
                    assert not fn.get("name") or fn["name"] == calls[idx]["name"], f"renamed tool call {tc}"
                calls[idx]["args"].append(fn.get("arguments") or "")
            if choice.get("finish_reason") is not None:
                finishes.append(choice["finish_reason"])
    _check_text("".join(text), want.text)
    _check_reasoning("".join(reasoning), want.reasoning)
    assert sorted(calls) == list(range(len(calls))), f"tool-call indexes {sorted(calls)}"
    got_tools = []
    for idx in sorted(calls):
        raw = "".join(calls[idx]["args"])
        try:
            args = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pytest.fail(f"tool call {idx}: arguments {raw!r} are not JSON")
        got_tools.append((calls[idx]["name"], args))
    assert tuple(got_tools) == want.tools
    # finish reason: once, in the vocabulary, the expected one, the one the relay records
    assert len(finishes) == 1, f"finish reasons {finishes}"
    assert finishes[0] in FINISH and finishes[0] == want.finish, f"finish {finishes[0]!r} != {want.finish!r}"
    assert run.finish_reason == want.finish
    # usage: the trailing usage-only chunk and what the relay meters
    # (DeepSeek puts usage on its finish chunk; native decoders add OpenAI's usage-only chunk)
    last = chunks[-1]
    if wire != "openai":
        assert last["choices"] == [], "the last chunk is not the usage-only chunk"
    _check_usage_dict(last.get("usage"), want.usage, "final usage chunk")
    _check_usage(run.usage, want.usage, "metered usage")


def _stable(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # ``created`` is the clock and native ids may be random per decoder: everything else must match
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


@pytest.mark.parametrize(("name", "fixture", "want"), _cases("streams"))
def test_stream(name: str, fixture: str, want: Expect) -> None:
    wire = FORMATS[name].wire
    data = (FIXTURES / fixture).read_bytes()
    whole = _run(wire, data, None)
    _assemble_stream(wire, whole, want)
    for size in (1, 7):
        run = _run(wire, data, size)
        assert _stable(run.chunks) == _stable(whole.chunks), f"{size}-byte pieces decode differently"
        assert (_usage_tuple(run.usage), run.finish_reason, run.error) == (
            _usage_tuple(whole.usage), whole.finish_reason, whole.error), f"{size}-byte pieces"


@pytest.mark.parametrize("fixture", sorted(STREAM_ERRORS))
def test_stream_error(fixture: str) -> None:
    wire, etype = STREAM_ERRORS[fixture]
    data = (FIXTURES / fixture).read_bytes()
    for size in (None, 1, 7):
        run = _run(wire, data, size)
        assert run.error is not None, f"{size}: mid-stream error not reported"
        assert run.error.get("type") == etype and run.error.get("type") in ERROR_TYPES
        assert isinstance(run.error.get("message"), str) and run.error["message"]


# --- non-streaming responses ------------------------------------------------------------------------


def _check_response(body: dict[str, Any], usage: Usage | None, finish: str | None, want: Expect) -> None:
    assert body.get("object") == "chat.completion"
    assert isinstance(body.get("id"), str) and body["id"]
    choices = body.get("choices")
    assert isinstance(choices, list) and choices
    message = choices[0].get("message")
    assert isinstance(message, dict) and message.get("role") == "assistant"
    _check_text(message.get("content") or "", want.text)
    _check_reasoning(message.get("reasoning_content") or message.get("reasoning") or "", want.reasoning)
    got_tools = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        assert call.get("id") and call.get("type") == "function" and fn.get("name"), f"tool call {call}"
        assert isinstance(fn.get("arguments"), str), "arguments must be a JSON string"
        got_tools.append((fn["name"], orjson.loads(fn["arguments"])))
    assert tuple(got_tools) == want.tools
    reason = choices[0].get("finish_reason")
    assert reason in FINISH and reason == want.finish, f"finish {reason!r} != {want.finish!r}"
    assert finish == reason
    _check_usage_dict(body.get("usage"), want.usage, "response usage")
    _check_usage(usage, want.usage, "metered usage")


def _response(wire: str, fixture: str, want: Expect) -> None:
    data = (FIXTURES / fixture).read_bytes()
    if wire == "openai":
        usage, finish, model = parse_chat_response(data)
        body = orjson.loads(data)
        assert model == body.get("model")
    else:
        tr = wire_format(wire).parse_chat(data, MODEL)
        body, usage, finish = tr.response, tr.usage, tr.finish_reason
        assert orjson.loads(orjson.dumps(body)) == body  # serialisable as the client will get it
    _check_response(body, usage, finish, want)


@pytest.mark.parametrize(("name", "fixture", "want"), _cases("responses"))
def test_response(name: str, fixture: str, want: Expect) -> None:
    _response(FORMATS[name].wire, fixture, want)


@pytest.mark.parametrize("fixture", sorted(VENDOR_RESPONSES))
def test_vendor_response(fixture: str) -> None:
    _response("openai", fixture, VENDOR_RESPONSES[fixture])


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, f in FORMATS.items() if f.error))
def test_error(name: str) -> None:
    fmt = FORMATS[name]
    case = fmt.error
    assert case is not None
    data = (FIXTURES / case.fixture).read_bytes()
    if fmt.wire == "openai":
        err = upstream_error(name, case.http_status, data, {})
    else:
        err = wire_format(fmt.wire).parse_error(case.http_status, data)
    assert (err.status, err.type, err.code) == (case.status, case.type, case.code)
    assert err.type in ERROR_TYPES
    assert isinstance(err.message, str) and err.message
