"""Failover across every deployment on every surface, whatever their wire formats.

The matrix: each surface (chat completions, Messages, Responses, embeddings) × the pair of
deployments (same family: both native or both reached through chat; cross family: native →
translated and translated → native) × (stream, non-stream), with the first deployment
answering 500 from a real upstream on 127.0.0.1. "Native" is a deployment whose format
passes the surface through (``WireFormat.passes_through``): OpenAI-compatible for chat and
embeddings, Anthropic for Messages, ``responses_api: true`` for Responses; "translated" is
any other (Anthropic for chat, OpenAI chat for Messages and Responses, Ollama for
embeddings). Each case goes through the official SDK of the surface and asserts the answer
is well formed in the client's format, the log row has both attempts, and usage and cost
are the answering deployment's.

Upstreams: the shared mock (OpenAI chat), ``Replay`` (Anthropic /v1/messages and OpenAI
/v1/responses from recorded fixtures), ``FakeUpstream`` (OpenAI and Ollama embeddings, images)
and ``Scripted`` answering every request 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import CLIENT_KEY, Gateway, gateway_config, serve_asgi
from test_embeddings_images import OLLAMA_VECTOR, FakeUpstream
from test_resilience import Scripted
from test_surfaces import Replay

from llm_proxy.testing.mock_upstream import MockUpstream

TIMEOUTS = {"connect": 1, "read": 5, "total": 10}
MODEL = "matrix-model"
PRICE_OK = {"input": 1.0, "output": 2.0}  # USD per 1M tokens at the deployment that answers
PRICE_BAD = {"input": 50.0, "output": 70.0}  # at the failing one: a cost priced here is wrong
MOCK_TEXT = "Hello from the mock upstream."

# What each family of upstream answers: its text's start (non-stream, stream) and usage as
# (prompt, completion) (non-stream, stream): the mock's rule for "hi" (3 per message + words; 5 out)
# and the recorded fixtures' own.
ANSWERS: dict[str, tuple[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]]] = {
    "openai-chat": ((MOCK_TEXT, MOCK_TEXT), ((4, 5), (4, 5))),
    "anthropic": (("Hello! I'm doing well", "Hello there!"), ((12, 29), (11, 6))),
    "openai-responses": (("In a peaceful grove", "The final result is **570**."), ((36, 87), (299, 12))),
    "openai-embed": (("", ""), ((12, 0), (12, 0))),
    "ollama-embed": (("", ""), ((7, 0), (7, 0))),
}
# Per surface: the family that passes it through, and the one reached through chat (or codec).
FAMILIES = {
    "chat.completions": {"native": "openai-chat", "translated": "anthropic"},
    "messages": {"native": "anthropic", "translated": "openai-chat"},
    "responses": {"native": "openai-responses", "translated": "openai-chat"},
    "embeddings": {"native": "openai-embed", "translated": "ollama-embed"},
}
PAIRS = [("native", "native"), ("translated", "translated"), ("native", "translated"), ("translated", "native")]


class Upstreams:
    def __init__(self, mock: str, replay: str, fake: str, failing: str) -> None:
        self.mock, self.replay, self.fake, self.failing = mock, replay, fake, failing

    def provider(self, family: str, *, healthy: bool) -> dict[str, Any]:
        """A provider of ``family``, at its real upstream or at the one answering 500."""
        kind, root = {
            "openai-chat": ("openai", self.mock.removesuffix("/v1")),
            "anthropic": ("anthropic", self.replay),
            "openai-responses": ("openai", self.replay),
            "openai-embed": ("openai", self.fake),
            "ollama-embed": ("ollama", self.fake),
        }[family]
        root = root if healthy else self.failing
        base = root if kind in ("anthropic", "ollama") else root + "/v1"
        config: dict[str, Any] = {"type": kind, "base_url": base, "api_key": f"sk-{family}-upstream",
                                  "models": [MODEL], "timeouts": TIMEOUTS,
                                  "prices": {MODEL: PRICE_OK if healthy else PRICE_BAD}}
        if family == "openai-responses":
            config["responses_api"] = True
        return config


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Replay, FakeUpstream, Scripted, str, str, str]]:
    replay, fake, failing = Replay(), FakeUpstream(), Scripted(always=(500, {}))
    with serve_asgi(replay) as replay_url, serve_asgi(fake) as fake_url, serve_asgi(failing) as failing_url:
        yield replay, fake, failing, replay_url, fake_url, failing_url


@pytest.fixture
def build(mock: MockUpstream, servers: Any, tmp_path: Path) -> Iterator[Any]:
    """``build(first_family, second_family, **overrides)``: a gateway where ``MODEL`` is served
    by ``first`` (answering 500) then ``second`` (healthy), tried in that order."""
    replay, fake, failing, replay_url, fake_url, failing_url = servers
    replay.requests.clear()
    fake.requests.clear()
    failing.seen.clear()
    ups = Upstreams(mock.base_url_v1, replay_url, fake_url, failing_url)
    started: list[Gateway] = []

    def factory(first: str, second: str, *, first_healthy: bool = False, **overrides: Any) -> Gateway:
        providers = {"first": ups.provider(first, healthy=first_healthy), "second": ups.provider(second, healthy=True)}
        config = gateway_config(mock.base_url_v1, tmp_path / f"matrix{len(started)}.db", providers=providers,
                                models={MODEL: {"deployments": [{"provider": "first"}, {"provider": "second"}]}},
                                **overrides)
        gw = Gateway(config).start()
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()


def openai_sdk(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def anthropic_sdk(gw: Gateway) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def ask(surface: str, gw: Gateway, stream: bool) -> str:
    """One request through the surface's SDK; the answer's text, after checking its shape."""
    hi = [{"role": "user", "content": "hi"}]
    if surface == "chat.completions":
        client = openai_sdk(gw)
        if not stream:
            reply = client.chat.completions.create(model=MODEL, messages=hi)  # type: ignore[arg-type]
            assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
            assert reply.choices[0].finish_reason == "stop"
            return reply.choices[0].message.content or ""
        chunks = list(client.chat.completions.create(model=MODEL, messages=hi, stream=True))  # type: ignore[arg-type]
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if surface == "messages":
        claude = anthropic_sdk(gw)
        if not stream:
            msg = claude.messages.create(model=MODEL, max_tokens=50, messages=hi)  # type: ignore[arg-type]
            assert (msg.type, msg.role, msg.stop_reason) == ("message", "assistant", "end_turn")
            assert msg.content[0].type == "text"
            return msg.content[0].text
        with claude.messages.stream(model=MODEL, max_tokens=50, messages=hi) as events:  # type: ignore[arg-type]
            text = "".join(events.text_stream)
            final = events.get_final_message()
        assert final.type == "message" and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
        return text
    if surface == "responses":
        client = openai_sdk(gw)
        if not stream:
            resp = client.responses.create(model=MODEL, input="hi")
            assert resp.object == "response" and resp.status == "completed" and resp.usage is not None
            return resp.output_text
        events = list(client.responses.create(model=MODEL, input="hi", stream=True))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        return "".join(getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta")
    assert surface == "embeddings" and not stream
    reply = openai_sdk(gw).embeddings.create(model=MODEL, input=["sunny day", "rainy day"], encoding_format="float")
    assert reply.object == "list" and [d.index for d in reply.data] == [0, 1]
    assert all(d.embedding and all(isinstance(x, float) for x in d.embedding) for d in reply.data)
    return "ollama" if reply.data[0].embedding == OLLAMA_VECTOR else "openai"


CASES = [
    pytest.param(surface, first, second, stream, id=f"{surface}-{first}-to-{second}-{'stream' if stream else 'json'}")
    for surface in FAMILIES
    for first, second in PAIRS
    for stream in (False, True)
    if not (stream and surface == "embeddings")
]


@pytest.mark.parametrize(("surface", "first", "second", "stream"), CASES)
def test_failover_matrix(build: Any, servers: Any, surface: str, first: str, second: str, stream: bool) -> None:
    first_family, second_family = FAMILIES[surface][first], FAMILIES[surface][second]
    gw = build(first_family, second_family)
    text = ask(surface, gw, stream)
    texts, usages = ANSWERS[second_family]
    if surface == "embeddings":
        assert text == ("ollama" if second_family == "ollama-embed" else "openai")
    else:
        assert text.startswith(texts[stream]), text
    assert len(servers[2].seen) == 1  # the failing deployment was asked once, then the other
    (row,) = gw.rows(1)
    assert (row["endpoint"], row["status"], row["provider"], row["stream"]) == (surface, 200, "second", int(stream))
    attempts = json.loads(row["attempts"] or "[]")
    assert [(a["provider"], a["status"], a["outcome"]) for a in attempts] == [
        ("first", 500, "server"), ("second", 200, "ok")]
    prompt, completion = usages[stream]
    assert (row["prompt_tokens"], row["completion_tokens"] or 0, row["usage_estimated"]) == (prompt, completion, 0)
    expected = (prompt * PRICE_OK["input"] + completion * PRICE_OK["output"]) / 1e6
    assert row["cost_usd"] == pytest.approx(expected, rel=1e-9)


# -- what a deployment cannot serve is skipped, not answered 400 -----------------------------------


def test_responses_state_goes_to_the_deployment_that_keeps_it(build: Any, mock: MockUpstream, servers: Any) -> None:
    """``previous_response_id`` cannot be said in chat: the chat-translated deployment is passed
    over (no breaker verdict) and the native one serves it."""
    gw = build("openai-chat", "openai-responses", first_healthy=True)
    resp = openai_sdk(gw).responses.create(model=MODEL, input="again", previous_response_id="resp_123")
    assert resp.output_text.startswith("In a peaceful grove") and not mock.requests
    assert servers[0].requests[-1]["body"]["previous_response_id"] == "resp_123"  # the client's own request
    (row,) = gw.rows(1)
    attempts = json.loads(row["attempts"])
    assert [(a["provider"], a["status"], a["outcome"]) for a in attempts] == [
        ("first", 400, "skipped"), ("second", 200, "ok")]
    assert gw.runtime.routes.learned.deployment(gw.runtime.routes.targets(MODEL)[0]).breaker.state == "closed"


def test_what_no_deployment_can_serve_is_the_clients_400(build: Any) -> None:
    gw = build("openai-chat", "openai-chat", first_healthy=True)
    with pytest.raises(openai.BadRequestError) as info:
        openai_sdk(gw).responses.create(model=MODEL, input="again", previous_response_id="resp_123")
    assert "previous_response_id" in info.value.message


def test_embeddings_skip_a_format_without_embeddings(build: Any, servers: Any) -> None:
    gw = build("anthropic", "openai-embed", first_healthy=True)
    assert ask("embeddings", gw, False) == "openai"
    (row,) = gw.rows(1)
    assert [a["outcome"] for a in json.loads(row["attempts"])] == ["skipped", "ok"]


def test_image_stream_skips_a_format_that_cannot_stream(mock: MockUpstream, servers: Any, tmp_path: Path) -> None:
    _, fake, _, _, fake_url, _ = servers
    providers = {
        "gem": {"type": "gemini", "base_url": fake_url, "api_key": "gemini-key", "timeouts": TIMEOUTS,
                "models": ["imagen-4.0-generate-001"]},
        "oai": {"type": "openai", "base_url": fake_url + "/v1", "api_key": "sk-oai", "timeouts": TIMEOUTS,
                "models": ["gpt-image-1"]},
    }
    models = {"img": {"deployments": [{"provider": "gem", "model": "imagen-4.0-generate-001"},
                                      {"provider": "oai", "model": "gpt-image-1"}]}}
    gw = Gateway(gateway_config(mock.base_url_v1, tmp_path / "img.db", providers=providers, models=models)).start()
    try:
        with httpx.stream("POST", gw.url + "/v1/images/generations", timeout=10,
                          headers={"authorization": f"Bearer {CLIENT_KEY}"},
                          json={"model": "img", "prompt": "x", "stream": True}) as r:
            body = r.read()
        assert r.status_code == 200 and b"image_generation.completed" in body
        assert fake.requests[-1]["path"] == "/v1/images/generations"
        (row,) = gw.rows(1)
        assert row["provider"] == "oai"
        assert [a["outcome"] for a in json.loads(row["attempts"])] == ["skipped", "ok"]
    finally:
        gw.stop()


def test_before_plugins_run_on_the_translated_body_after_failover(build: Any, mock: MockUpstream) -> None:
    """A native Messages attempt skips the before stage; failing over to a deployment reached
    through chat runs it then, once, on the chat body."""
    gw = build("anthropic", "openai-chat", plugins=[{"name": "english_system_prompt", "stage": "before"}])
    assert ask("messages", gw, False).startswith(MOCK_TEXT)
    assert mock.requests[-1].body["messages"][0] == {"role": "system", "content": "Always respond in English."}
    (row,) = gw.rows(1)
    assert [a["outcome"] for a in json.loads(row["attempts"])] == ["server", "ok"]
