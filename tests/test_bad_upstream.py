"""A 200 the gateway cannot read is the same 502 ``bad_upstream_response`` for every wire format.

End to end: a real upstream on 127.0.0.1 answers 200 with garbage (not JSON, JSON of the wrong
type, an object of the wrong shape) and the client must get an OpenAI-shaped 502, never a 500
with a traceback. Gemini gave a 500 here before the formats shared one helper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import CLIENT_KEY, Gateway, gateway_config, read_body, serve_asgi

from llm_proxy.core.wire import EmbeddingsCodec
from llm_proxy.providers import FORMATS, wire_format

GARBAGE = {
    "not-json": b"<html>502 Bad Gateway</html>",
    "json-array": b"[1, 2, 3]",
    "json-string": b'"ok"',
    "wrong-object": b'{"unexpected": true}',
}
# Every format that reads what it relays (OpenAI-compatible chat passes its bytes through).
MODELS = {name: f"{name}-model" for name, fmt in FORMATS.items() if not fmt.chat_passthrough}
EMBEDDERS = sorted(name for name in MODELS if isinstance(FORMATS[name].embeddings, EmbeddingsCodec))


class GarbageUpstream:
    """Answers every request with HTTP 200 and ``body``."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[GarbageUpstream, str]]:
    app = GarbageUpstream()
    with serve_asgi(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def gw(upstream: tuple[GarbageUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _, url = upstream
    providers = {
        kind: {"type": kind, "base_url": url, "api_key": "upstream-key", "models": [model],
               "timeouts": {"connect": 2, "read": 5, "total": 10}}
        for kind, model in MODELS.items()
    }
    gateway = Gateway(gateway_config(url, tmp_path_factory.mktemp("bad") / "bad.db", providers=providers)).start()
    yield gateway
    gateway.stop()


def _post(gw: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=10)


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_chat_garbage_is_502(gw: Gateway, upstream: tuple[GarbageUpstream, str], kind: str, garbage: str) -> None:
    upstream[0].body = GARBAGE[garbage]
    r = _post(gw, "/v1/chat/completions", {"model": MODELS[kind], "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "bad_upstream_response")
    assert error["message"]


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_messages_passthrough_garbage_is_502(gw: Gateway, upstream: tuple[GarbageUpstream, str],
                                             garbage: str) -> None:
    """Anthropic Messages passed through is read for metering: garbage there is a 502 too."""
    assert FORMATS["anthropic"].passthrough_surface == "messages"
    upstream[0].body = GARBAGE[garbage]
    r = _post(gw, "/v1/messages", {"model": MODELS["anthropic"], "max_tokens": 16,
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502, r.text


@pytest.mark.parametrize("kind", EMBEDDERS)
def test_embeddings_garbage_is_502(gw: Gateway, upstream: tuple[GarbageUpstream, str], kind: str) -> None:
    upstream[0].body = GARBAGE["wrong-object"]
    r = _post(gw, "/v1/embeddings", {"model": MODELS[kind], "input": "hi"})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "bad_upstream_response"


@pytest.mark.parametrize(("kind", "data"), [
    ("anthropic", b"event: message_start\ndata: not json\n\n"),
    ("gemini", b"data: not json\n\n"),
    ("ollama", b"not json\n"),
])
def test_stream_garbage_is_a_stream_error(kind: str, data: bytes) -> None:
    """Mid-stream garbage ends the stream with an error event; it never raises out of the relay."""
    decoder = wire_format(kind).stream_decoder("m")
    decoder.feed(data)
    decoder.finish()
    assert decoder.error is not None and decoder.error["message"]
