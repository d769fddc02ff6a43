"""Native-format providers end to end: the official OpenAI SDK → gateway → Anthropic, Gemini
and Ollama wire formats, answered by a replay upstream with the real fixture bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import CLIENT_KEY, FIXTURES, Gateway, gateway_config, read_body, serve_asgi

ANTHROPIC_KEY = "sk-ant-upstream-secret"
GEMINI_KEY = "gemini-upstream-secret"


def _file(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class NativeUpstream:
    """Answers each native endpoint with a fixture, in 50-byte pieces (framing is the decoder's job)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def pick(self, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
        text = json.dumps(body)
        if path == "/v1/messages":
            if "#fail529" in text:
                return 529, "application/json", _file("anthropic/error_529_overloaded.json")
            if body.get("stream"):
                return 200, "text/event-stream", _file("anthropic/stream_basic.sse")
            return 200, "application/json", _file("anthropic/response_basic.json")
        if path.endswith(":generateContent"):
            return 200, "application/json", _file("gemini/generate_basic.response.json")
        if path.endswith(":streamGenerateContent"):
            return 200, "text/event-stream", _file("gemini/stream_alt_sse_thoughts.response.sse")
        if path == "/api/chat":
            if body.get("stream"):
                return 200, "application/x-ndjson", _file("ollama/api_chat_stream.ndjson")
            return 200, "application/json", _file("ollama/api_chat_response.json")
        return 404, "application/json", b'{"error": "no route"}'

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        if scope["method"] == "GET" and scope["path"] == "/api/tags":
            tags = b'{"models": [{"name": "qwen3:8b", "model": "qwen3:8b"}, {"name": "llama3.2:latest"}]}'
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": tags})
            return
        body = json.loads(raw)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "query": scope["query_string"].decode(),
                              "headers": headers, "body": body})
        status, ctype, data = self.pick(scope["path"], body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode())]})
        for i in range(0, len(data), 50):
            await send({"type": "http.response.body", "body": data[i:i + 50], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def native() -> Iterator[tuple[NativeUpstream, str]]:
    app = NativeUpstream()
    with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
def gw(native: tuple[NativeUpstream, str], tmp_path: Any) -> Iterator[Gateway]:
    app, url = native
    app.requests.clear()
    providers = {
        "claude": {"type": "anthropic", "base_url": url, "api_key": ANTHROPIC_KEY, "models": ["claude-sonnet-4-5"]},
        "gem": {"type": "gemini", "base_url": url, "api_key": GEMINI_KEY, "catalog_provider": "google",
                "models": ["gemini-2.5-flash"]},
        "llama": {"type": "ollama", "base_url": url, "api_key_required": False, "models": ["llama3.2"]},
        "local": {"type": "ollama", "base_url": url, "api_key_required": False},  # models from /api/tags
    }
    gateway = Gateway(gateway_config(url, tmp_path / "native.db", providers=providers)).start()
    yield gateway
    gateway.stop()


def sdk(gateway: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gateway.clients.append(client)  # closed with the gateway: no sockets left for the GC
    return client


def hello(model: str, text: str = "Hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}


def stream_text(gateway: Gateway, model: str, **extra: Any) -> tuple[str, str, list[Any]]:
    chunks = list(sdk(gateway).chat.completions.create(stream=True, **hello(model), **extra))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    return content, reasoning, chunks


def test_anthropic_non_stream(gw: Gateway, native: tuple[NativeUpstream, str]) -> None:
    reply = sdk(gw).chat.completions.create(**hello("claude-sonnet-4-5"))
    assert reply.choices[0].message.content.startswith("Hello! I'm doing well")
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 29)
    sent = native[0].requests[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY and "authorization" not in sent["headers"]
    assert sent["body"]["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert sent["body"]["max_tokens"] > 0  # defaulted: Anthropic requires it
    (row,) = gw.rows(1)
    assert (row["provider"], row["prompt_tokens"], row["completion_tokens"], row["status"]) == ("claude", 12, 29, 200)
    assert row["cost_usd"] == pytest.approx((12 * 3.0 + 29 * 15.0) / 1e6, rel=1e-12)  # catalog: 3 / 15 per 1M


def test_anthropic_stream(gw: Gateway) -> None:
    content, _, chunks = stream_text(gw, "claude-sonnet-4-5")
    assert content == "Hello there!"
    assert all(c.usage is None for c in chunks)  # not asked for: stripped
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    (row,) = gw.rows(1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"], row["usage_estimated"]) == (11, 6, 1, 0)
    assert row["ttft_ms"] is not None and row["finish_reason"] == "stop"
    assert row["cost_usd"] == pytest.approx((11 * 3.0 + 6 * 15.0) / 1e6, rel=1e-12)


def test_anthropic_stream_with_usage_asked(gw: Gateway) -> None:
    _, _, chunks = stream_text(gw, "claude-sonnet-4-5", stream_options={"include_usage": True})
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (11, 6)


def test_anthropic_overloaded_is_503_in_openai_shape(gw: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gw).chat.completions.create(**hello("claude-sonnet-4-5", "#fail529"))
    assert info.value.status_code == 503
    assert set(info.value.body) >= {"message", "type"}  # the SDK hands over the "error" object
    (row,) = gw.rows(1)
    assert row["status"] == 503


def test_gemini_non_stream_key_in_header_not_url(gw: Gateway, native: tuple[NativeUpstream, str]) -> None:
    reply = sdk(gw).chat.completions.create(**hello("gemini-2.5-flash", "Capital of France?"))
    assert reply.choices[0].message.content == "Paris"
    sent = native[0].requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent["headers"]["x-goog-api-key"] == GEMINI_KEY and GEMINI_KEY not in sent["query"]
    assert sent["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."
    (row,) = gw.rows(1)
    # thoughts count as completion tokens and as reasoning tokens, OpenAI-style
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (11, 35, 34)


def test_gemini_stream_reasoning_and_final_usage(gw: Gateway, native: tuple[NativeUpstream, str]) -> None:
    content, reasoning, _ = stream_text(gw, "gemini-2.5-flash")
    assert content and reasoning
    sent = native[0].requests[-1]
    assert sent["path"].endswith(":streamGenerateContent") and "alt=sse" in sent["query"]
    (row,) = gw.rows(1)
    # usageMetadata is cumulative: the last one counts, never the sum
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (51, 745 + 1234, 1234)
    # catalog google/gemini-2.5-flash: 0.3 in, 2.5 out (thoughts bill as output)
    assert row["cost_usd"] == pytest.approx((51 * 0.3 + (745 + 1234) * 2.5) / 1e6, rel=1e-12)


def test_ollama_native_stream_and_not(gw: Gateway, native: tuple[NativeUpstream, str]) -> None:
    content, _, _ = stream_text(gw, "llama3.2")
    assert content == "The sky"
    reply = sdk(gw).chat.completions.create(**hello("llama3.2"))
    assert reply.choices[0].message.content == "Hello! How are you today?"
    assert native[0].requests[-1]["path"] == "/api/chat"
    assert native[0].requests[-1]["body"]["stream"] is False
    rows = gw.rows(2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(26, 282), (26, 298)]


def test_anthropic_sdk_against_every_native_upstream(gw: Gateway) -> None:
    """The Messages surface served by Gemini- and Ollama-format upstreams (and Anthropic's own)."""
    import anthropic

    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    for model, text in (("gemini-2.5-flash", "Paris"), ("llama3.2", "Hello! How are you today?")):
        msg = client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        assert [b.text for b in msg.content if b.type == "text"] == [text]
    with client.messages.stream(model="llama3.2", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == "The sky"
    rows = gw.rows(3)
    assert [(r["endpoint"], r["provider"], r["status"]) for r in rows] == [
        ("messages", "gem", 200), ("messages", "llama", 200), ("messages", "llama", 200)]
    assert (rows[2]["prompt_tokens"], rows[2]["completion_tokens"]) == (26, 282)


def test_responses_api_served_by_anthropic(gw: Gateway) -> None:
    events = list(sdk(gw).responses.create(model="claude-sonnet-4-5", input="hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello there!" and events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 6
    (row,) = gw.rows(1)
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == ("responses", 11, 6)


def test_ollama_models_discovered_from_tags(gw: Gateway, native: tuple[NativeUpstream, str]) -> None:
    ids = {m.id: m.owned_by for m in sdk(gw).models.list()}
    assert ids["qwen3:8b"] == "local" and ids["llama3.2:latest"] == "local"
    reply = sdk(gw).chat.completions.create(**hello("qwen3:8b"))
    assert reply.choices[0].message.content == "Hello! How are you today?"
    assert native[0].requests[-1]["body"]["model"] == "qwen3:8b"


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def with_image(model: str, url: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "llama3.2"])
@pytest.mark.parametrize(("url", "words"), [
    ("data:text/html;base64,PGI+aGk8L2I+", "'text/html', not an image"),
    ("data:application/pdf;base64,JVBERi0=", "'application/pdf', not an image"),
    ("data:image/png;base64,not*base64!", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # unpadded
    ("data:image/png;base64,", "no image data"),
], ids=["html", "pdf", "garbage", "unpadded", "empty"])
def test_a_bad_data_image_url_is_400_naming_the_part_and_never_forwarded(
        gw: Gateway, native: tuple[NativeUpstream, str], model: str, url: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gw).chat.completions.create(**with_image(model, url))
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_image_url" and error["param"] == "messages[0].content[1].image_url.url"
    assert words in error["message"] and "messages[0].content[1]" in error["message"]
    assert native[0].requests == []


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "llama3.2"])
def test_a_valid_data_image_url_is_forwarded(gw: Gateway, native: tuple[NativeUpstream, str], model: str) -> None:
    assert sdk(gw).chat.completions.create(**with_image(model, f"data:image/png;base64,{PNG_B64}")).choices
    assert PNG_B64 in json.dumps(native[0].requests[-1]["body"])
