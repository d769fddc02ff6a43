"""Wrong JSON types never make the gateway answer 500 (issue 10, item 10).

Every surface (chat completions, Messages and its count_tokens, Responses, embeddings,
images) × every wire format (openai, anthropic, gemini, ollama) is driven with bodies whose
fields hold wrong JSON types, against one mock upstream on 127.0.0.1 that answers every
native endpoint with a valid fixture — so whatever goes wrong is the gateway's own doing.
The answer must be a 4xx in the surface's error shape or a normal answer, never a 500.

Hypothesis runs with a fixed seed per cell and a bounded number of examples, so CI sees the
same bodies every run. Its mutations know nothing of the gateway's declared shapes: they
replace any node of a rich valid body (or add a known field name anywhere) with a value of
another JSON type, so a field a translator reads but does not declare is found too. The same
bodies are also swept exhaustively in process (every node, every other type) through each
surface's translation and every translating format. The checker itself: ``test_shapes.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLIENT_KEY, FIXTURES, Gateway, gateway_config, read_body, serve_asgi
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from llm_proxy.core.config import ImagesConfig
from llm_proxy.core.errors import ProxyError
from llm_proxy.inbound import anthropic_messages, responses
from llm_proxy.providers import FORMATS
from llm_proxy.upstream.remote_images import ImageFetcher

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PNG_URL = f"data:image/png;base64,{PNG_B64}"

# model per (wire format, surface); None: the format has no such capability (a 400 is expected)
CHAT_MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash",
               "ollama": "llama3.2"}
EMBED_MODELS = {"openai": "text-embedding-3-small", "anthropic": "claude-sonnet-4-5",
                "gemini": "gemini-embedding-001", "ollama": "nomic-embed-text"}
IMAGE_MODELS = {"openai": "gpt-image-1", "anthropic": "claude-sonnet-4-5", "gemini": "imagen-4.0-generate-001",
                "ollama": "llama3.2"}


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FixtureUpstream:
    """Every native endpoint the four formats call, answered with a valid fixture (or a valid
    answer sized to the request, for embeddings and Imagen). Never fails: any 5xx is the gateway's."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    def pick(self, path: str, body: Any) -> tuple[str, bytes]:
        stream = isinstance(body, dict) and body.get("stream") is True
        if path == "/v1/chat/completions":
            if stream:
                return "text/event-stream", _fixture("openai_chat/stream_basic_with_usage.sse")
            return "application/json", _fixture("openai_chat/response_basic.json")
        if path == "/v1/embeddings":
            return "application/json", _fixture("openai_embeddings/response_two_inputs.json")
        if path == "/v1/images/generations":
            if stream:
                event = {"type": "image_generation.completed", "b64_json": PNG_B64}
                return "text/event-stream", b"event: image_generation.completed\ndata: " + json.dumps(event).encode() + b"\n\n"
            return "application/json", _fixture("openai_images/response.json")
        if path == "/v1/messages/count_tokens":
            return "application/json", b'{"input_tokens": 12}'
        if path == "/v1/messages":
            if stream:
                return "text/event-stream", _fixture("anthropic/stream_basic.sse")
            return "application/json", _fixture("anthropic/response_basic.json")
        if path.endswith(":streamGenerateContent"):
            return "text/event-stream", _fixture("gemini/stream_alt_sse_thoughts.response.sse")
        if path.endswith(":generateContent"):
            return "application/json", _fixture("gemini/generate_basic.response.json")
        if path.endswith(":batchEmbedContents"):
            count = len(body.get("requests") or ()) if isinstance(body, dict) else 1
            return "application/json", json.dumps({"embeddings": [{"values": [0.1, 0.2]}] * count}).encode()
        if path.endswith(":predict"):
            return "application/json", json.dumps(
                {"predictions": [{"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"}]}).encode()
        if path == "/api/chat":
            if stream:
                return "application/x-ndjson", _fixture("ollama/api_chat_stream.ndjson")
            return "application/json", _fixture("ollama/api_chat_response.json")
        if path == "/api/embed":
            inp = body.get("input") if isinstance(body, dict) else None
            count = len(inp) if isinstance(inp, list) else 1
            return "application/json", json.dumps({"embeddings": [[0.1, 0.2]] * count, "prompt_eval_count": 3}).encode()
        raise AssertionError(f"the gateway called an unexpected path {path}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        self.requests.append((scope["path"], raw))
        ctype, data = self.pick(scope["path"], json.loads(raw))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def upstream_app() -> Iterator[tuple[FixtureUpstream, str]]:
    app = FixtureUpstream()
    with serve_asgi(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def gw(upstream_app: tuple[FixtureUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    url = upstream_app[1]
    providers = {
        "oai": {"type": "openai", "base_url": url + "/v1", "api_key": "sk-up",
                "models": ["gpt-4o", "text-embedding-3-small", "gpt-image-1"]},
        "claude": {"type": "anthropic", "base_url": url, "api_key": "sk-ant-up", "models": ["claude-sonnet-4-5"]},
        "gem": {"type": "gemini", "base_url": url, "api_key": "gem-up", "catalog_provider": "google",
                "models": ["gemini-2.5-flash", "gemini-embedding-001", "imagen-4.0-generate-001"]},
        "llama": {"type": "ollama", "base_url": url, "api_key_required": False,
                  "models": ["llama3.2", "nomic-embed-text"]},
    }
    # A rule group and a before-plugin that read the body too, on the way to every translator.
    groups = {"fuzz-group": {"targets": ["gemini-2.5-flash", "llama3.2"],
                             "rules": [{"when": {"multimodal": True}, "target": "gemini-2.5-flash"}]}}
    plugins = [{"name": "english_system_prompt", "stage": "before"}]
    db = Path(tmp_path_factory.mktemp("fuzz")) / "fuzz.db"
    gateway = Gateway(gateway_config(url, db, providers=providers, groups=groups, plugins=plugins)).start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=15) as c:
        yield c


# ---------------------------------------------------------------- valid bodies, one rich one per surface

def chat_body(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                                         {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}}]},
            {"role": "assistant", "content": "Calling.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                                                     "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 64, "max_completion_tokens": 64, "stop": ["END"],
        "n": 1, "seed": 7, "presence_penalty": 0.0, "frequency_penalty": 0.0, "user": "u1",
        "parallel_tool_calls": True, "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def messages_body(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model, "max_tokens": 64, "stream": stream,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain",
                                                                  "data": "notes"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Calling."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                 "content": [{"type": "text", "text": "sunny"}]}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "low"},
        "metadata": {"user_id": "u1"},
    }


def responses_body(model: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model, "instructions": "Be brief.", "stream": stream,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Look"},
                                         {"type": "input_image", "image_url": PNG_URL, "detail": "low"}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "Weather now",
                   "parameters": {"type": "object"}, "strict": False}],
        "tool_choice": {"type": "function", "name": "weather"},
        "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 64, "parallel_tool_calls": True, "user": "u1",
        "reasoning": {"effort": "low"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": False}},
    }


def embeddings_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "input": ["hello", "world"], "dimensions": 8, "encoding_format": "float", "user": "u1"}


def images_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "prompt": "a cat", "n": 1, "size": "1024x1024", "response_format": "b64_json",
            "quality": "high", "user": "u1"}


def count_body(model: str, stream: bool) -> dict[str, Any]:
    body = messages_body(model, False)
    del body["stream"]
    return body


# surface -> (path, models by format, body factory, Anthropic error shape, streams)
SURFACES = {
    "chat": ("/v1/chat/completions", CHAT_MODELS, chat_body, False, True),
    "messages": ("/v1/messages", CHAT_MODELS, messages_body, True, True),
    "count_tokens": ("/v1/messages/count_tokens", CHAT_MODELS, count_body, True, False),
    "responses": ("/v1/responses", CHAT_MODELS, responses_body, False, True),
    "embeddings": ("/v1/embeddings", EMBED_MODELS, embeddings_body, False, False),
    "images": ("/v1/images/generations", IMAGE_MODELS, images_body, False, False),
}


def test_the_valid_bodies_are_served(client: httpx.Client) -> None:
    """The baseline the mutations start from: each rich body is a normal answer where the
    format has the capability (so a fuzzed 4xx is about the mutation, not the base)."""
    unsupported = {("embeddings", "anthropic"), ("images", "anthropic"), ("images", "ollama")}
    for surface, (path, models, make, _, streams) in SURFACES.items():
        for fmt, model in models.items():
            for stream in (False, True) if streams else (False,):
                response = client.post(path, json=make(model, stream))
                expected = 400 if (surface, fmt) in unsupported else 200
                assert response.status_code == expected, (surface, fmt, stream, response.text)


# ---------------------------------------------------------------- mutations: wrong JSON types anywhere

# Field names the translators read, so added members and nested objects reach real code paths.
KEYS = ("role", "content", "type", "text", "image_url", "url", "tool_calls", "function", "name", "arguments",
        "id", "tool_call_id", "source", "data", "media_type", "input", "tool_use_id", "input_audio", "format",
        "json_schema", "schema", "budget_tokens", "effort", "call_id", "output", "refusal", "detail",
        "parameters", "user_id", "cache_control", "title", "is_error", "disable_parallel_tool_use")
WORDS = ("text", "image_url", "image", "document", "tool_use", "tool_result", "function", "function_call",
         "function_call_output", "input_text", "input_image", "message", "user", "assistant", "tool", "system",
         "auto", "none", "required", "any", "json_object", "json_schema", "base64", "enabled", "adaptive", "", "x")
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 100_000), st.floats(-2, 1e6, allow_nan=False),
                     st.sampled_from(WORDS))
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3), max_leaves=6)
FIXED = ("model", "stream_options")  # routing, and what the stream wrapper sets itself, stay as sent


def _json_type(value: Any) -> str:
    return "integer" if type(value) is int else type(value).__name__


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every node under the body; paths are keys and indexes."""
    if path:
        yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nodes(item, (*path, i))


def _set(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three nodes replaced by a value of another JSON type, or a known
    field name added to an object with any value."""
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        nodes = [(p, v) for p, v in _nodes(body) if p[0] not in FIXED]
        if draw(st.booleans()):
            path, current = draw(st.sampled_from(nodes))
            value = draw(JSON_VALUES.filter(lambda v, c=current: _json_type(v) != _json_type(c)))
            _set(body, path, value)
        else:
            objects = [()] + [p for p, v in nodes if isinstance(v, dict)]
            where = draw(st.sampled_from(objects))
            key = draw(st.sampled_from(KEYS))
            target: Any = body
            for step in where:
                target = target[step]
            target[key] = draw(JSON_VALUES)
    return body


def _events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each SSE event."""
    out = []
    for frame in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n") if ": " in line)
        if fields:
            out.append((fields.get("event", ""), fields.get("data", "")))
    return out


def check_answer(surface: str, response: httpx.Response, sent: dict[str, Any]) -> None:
    """A 4xx in the surface's error shape, or a normal answer; a stream ends as it should, without
    an error event (the upstream never sends one, so one would be the gateway's own failure)."""
    where = f"{response.request.url.path} {json.dumps(sent)[:2000]}"
    assert response.status_code < 500, f"{response.status_code} {response.text[:500]} for {where}"
    if response.status_code >= 400:
        error = response.json()
        if SURFACES[surface][3]:  # Anthropic's envelope
            assert error["type"] == "error" and isinstance(error["error"]["message"], str), where
        else:
            assert isinstance(error["error"]["message"], str) and isinstance(error["error"]["type"], str), where
        return
    assert response.status_code == 200, where
    if not response.headers["content-type"].startswith("text/event-stream"):
        response.json()
        return
    events = _events(response.text)
    assert events, where
    if surface == "chat":
        assert events[-1][1] == "[DONE]" and not any('"error":' in data for _, data in events), where
    elif surface == "messages":
        assert events[-1][0] == "message_stop" and all(name != "error" for name, _ in events), where
    else:
        assert events[-1][0] in ("response.completed", "response.incomplete"), where


# Bounded and reproducible: a fixed seed per cell (below) and no example database.
FUZZ = settings(max_examples=50, deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.mark.parametrize("fmt", sorted(CHAT_MODELS))
@pytest.mark.parametrize("surface", list(SURFACES))
def test_wrong_types_never_give_a_500(client: httpx.Client, surface: str, fmt: str) -> None:
    path, models, make, _, streams = SURFACES[surface]

    @FUZZ
    @seed(zlib.crc32(f"{surface}/{fmt}".encode()))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        stream = streams and data.draw(st.booleans(), label="stream")
        body = data.draw(mutated(make(models[fmt], stream)), label="body")
        check_answer(surface, client.post(path, json=body), body)

    run()


# ---------------------------------------------------------------- every field, in process

WRONG = (5, 1.5, "x", True, [1], {"x": 1}, None)


def _sweep(base: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of ``base`` replaced in turn by each value of another JSON type."""
    for path, value in _nodes(base):
        if path[0] in FIXED:
            continue
        for wrong in WRONG:
            if _json_type(wrong) != _json_type(value):
                body = copy.deepcopy(base)
                _set(body, path, wrong)
                yield f"{'/'.join(map(str, path))} = {wrong!r}", body


def _translate_chat(fmt: str, body: dict[str, Any]) -> None:
    """What the dispatcher does before sending to a translating format (pass-through: nothing)."""
    wire = FORMATS[fmt]
    shape = getattr(wire, "chat_shape", None)
    if shape is not None:
        shape.check(body)
    if wire.needs_inline_images:
        asyncio.run(ImageFetcher(ImagesConfig()).inline_images(body))
    wire.build_chat(body, CHAT_MODELS[fmt], api_key="k", stream=False, max_output_tokens=4096)


def _served_or_refused(what: str, call: Any) -> Any:
    """``call()``'s result, or None when it refused with a 4xx; anything else fails the test."""
    try:
        return call()
    except ProxyError as exc:
        assert 400 <= exc.status < 500, f"{exc.status} for {what}"
    except Exception as exc:  # anything else is a 500 from the gateway
        raise AssertionError(f"{type(exc).__name__}: {exc} for {what}") from exc
    return None


TRANSLATED = [fmt for fmt in sorted(FORMATS) if not FORMATS[fmt].chat_passthrough]


@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
def test_every_field_of_a_wrong_type_is_a_client_error_in_every_translator(surface: str) -> None:
    """In process, exhaustively: each node of the rich body, each other JSON type, through the
    surface's translation to chat and every translating format's ``build_chat``."""
    to_chat = {"chat": lambda b: b, "messages": anthropic_messages.to_chat, "responses": responses.to_chat}[surface]
    make = SURFACES[surface][2]
    for what, body in _sweep(make("m", False)):
        chat = _served_or_refused(f"{surface} {what}", lambda b=body: to_chat(b))
        if surface == "messages":
            _served_or_refused(f"count_tokens {what}", lambda b=body: anthropic_messages.count_tokens(b))
        for fmt in TRANSLATED if chat is not None else ():
            _served_or_refused(f"{surface} -> {fmt} {what}", lambda f=fmt, c=chat: _translate_chat(f, copy.deepcopy(c)))


# ---------------------------------------------------------------- the issue's own examples

def _chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}


def _messages(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **fields}


EXAMPLES = [
    # (surface path, body, the field the 400 names)
    ("/v1/chat/completions", {"model": "gemini-2.5-flash", "messages": "str"}, "messages"),
    ("/v1/chat/completions", _chat("claude-sonnet-4-5", stop=5), "stop"),
    ("/v1/chat/completions", _chat("llama3.2", stop=5), "stop"),
    ("/v1/chat/completions", _chat("gemini-2.5-flash", max_tokens="abc"), "max_tokens"),
    ("/v1/chat/completions", _chat("gemini-2.5-flash", tools="x"), "tools"),
    ("/v1/chat/completions", _chat("llama3.2", tools="x"), "tools"),
    ("/v1/chat/completions", _chat("claude-sonnet-4-5", tools="x"), "tools"),
    ("/v1/chat/completions", _chat("gemini-2.5-flash", response_format="x"), "response_format"),
    ("/v1/chat/completions", _chat("llama3.2", response_format="x"), "response_format"),
    # through a rule group and a before-plugin, which read the body first
    ("/v1/chat/completions", {"model": "fuzz-group", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": []}]}]},
     "messages[1].content[0].type"),
    ("/v1/chat/completions", {"model": "gemini-2.5-flash", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": ["user"], "content": "Hi"}]}, "messages[1].role"),
    ("/v1/messages", _messages("gemini-2.5-flash", system=[{"type": "text", "text": 5}]), "system.0.text"),
    ("/v1/messages", _messages("gpt-4o", system=[{"type": "text", "text": 5}]), "system.0.text"),
    ("/v1/messages", _messages("llama3.2", thinking={"type": "enabled", "budget_tokens": "x"}),
     "thinking.budget_tokens"),
    ("/v1/messages", _messages("gemini-2.5-flash", metadata="x"), "metadata"),
    ("/v1/responses", {"model": "gemini-2.5-flash", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]}, "input[0].content[0].image_url"),
    ("/v1/responses", {"model": "gpt-4o", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]}, "input[0].content[0].image_url"),
    ("/v1/responses", {"model": "llama3.2", "input": "Hi", "tools": 5}, "tools"),
]


@pytest.mark.parametrize(("path", "body", "field"), EXAMPLES, ids=[f"{p}:{f}" for p, _, f in EXAMPLES])
def test_the_issue_examples_are_400_naming_the_field(client: httpx.Client, path: str, body: dict[str, Any],
                                                       field: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    if path == "/v1/messages":  # Anthropic's envelope has no param: the message names the field
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert f"'{field}'" in error["error"]["message"]
    else:
        assert (error["error"]["param"], error["error"]["code"]) == (field, "invalid_type")
        assert f"'{field}'" in error["error"]["message"]


def test_chat_to_an_openai_compatible_provider_is_not_checked(
        client: httpx.Client, upstream_app: tuple[FixtureUpstream, str]) -> None:
    """Pass-through pays nothing: the client's bytes go up as they came, the upstream judges them."""
    raw = b'{"model":"gpt-4o","messages":"str","stop":5,"tools":"x"}'
    sent = len(upstream_app[0].requests)
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert upstream_app[0].requests[sent:] == [("/v1/chat/completions", raw)]
