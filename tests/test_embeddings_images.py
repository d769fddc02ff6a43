"""``/v1/embeddings`` and ``/v1/images/generations`` end to end: the official OpenAI SDK →
gateway → an OpenAI-compatible upstream (fixture bytes), Gemini (batchEmbedContents, Imagen
:predict) and Ollama (/api/embed), answered by a small recording upstream."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import CLIENT_KEY, FIXTURES, Gateway, gateway_config, read_body, serve_asgi

UPSTREAM_KEY = "sk-upstream-secret-abcdef"
GEMINI_KEY = "gemini-upstream-secret"
OLLAMA_KEY = "ollama-upstream-secret"
# Exactly representable in float32, so base64 round trips compare equal.
GEMINI_VECTOR = [0.5, -0.25, 0.125, 1.0]
OLLAMA_VECTOR = [0.75, -1.5, 0.0625]
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
CATALOG_EMBED_PRICE = 0.02  # text-embedding-3-small, USD per 1M input tokens (proxy/data/models.json)
IMAGEN_PER_IMAGE = 0.04
DALLE_PER_IMAGE = 0.08
SSE_IMAGE = (
    b'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image","b64_json":"AA"}\n\n'
    b'event: image_generation.completed\ndata: {"type":"image_generation.completed","b64_json":"BB"}\n\n'
)


def _file(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeUpstream:
    """OpenAI, Gemini and Ollama endpoints on one server; every request is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def pick(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        text = json.dumps(body)
        if path == "/v1/embeddings":
            return 200, _file("openai_embeddings/response_two_inputs.json")
        if path == "/v1/images/generations":
            if body.get("stream"):
                return 200, SSE_IMAGE
            if "#fail400" in text:
                return 400, _file("openai_images/error_400_unknown_parameter.json")
            if "#usage" in text:
                return 200, _file("openai_images/response.json")
            return 200, _file("openai_images/response_dalle_url.json")
        if path.endswith(":batchEmbedContents"):
            if "#fail429" in text:
                return 429, _file("gemini/error_429_resource_exhausted.json")
            out = [{"values": GEMINI_VECTOR[: r.get("outputDimensionality", len(GEMINI_VECTOR))]}
                   for r in body["requests"]]
            return 200, json.dumps({"embeddings": out}).encode()
        if path.endswith(":predict"):
            n = body["parameters"].get("sampleCount", 1)
            preds = [{"bytesBase64Encoded": PNG_B64, "mimeType": "image/png"} for _ in range(n)]
            if "#filtered" in text:
                preds = [{"raiFilteredReason": "Blocked by the safety filter."}]
            return 200, json.dumps({"predictions": preds}).encode()
        if path == "/api/embed":
            if body["model"] == "missing-embed":
                return 404, _file("ollama/error_404_model_not_found.json")
            count = 1 if isinstance(body["input"], str) else len(body["input"])
            return 200, json.dumps({"model": body["model"], "embeddings": [OLLAMA_VECTOR] * count,
                                    "total_duration": 1000, "prompt_eval_count": 7}).encode()
        return 404, b'{"error": "no route"}'

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        body = json.loads(raw)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "query": scope["query_string"].decode(),
                              "headers": headers, "body": body, "raw": raw})
        status, data = self.pick(scope["path"], body)
        ctype = b"text/event-stream" if data.startswith(b"event:") else b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream()
    with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
def gw(fake: tuple[FakeUpstream, str], tmp_path: Any) -> Iterator[Gateway]:
    app, url = fake
    app.requests.clear()
    timeouts = {"connect": 2, "read": 5, "total": 20}
    providers = {
        "openai": {"type": "openai", "base_url": url + "/v1", "api_key": UPSTREAM_KEY, "timeouts": timeouts,
                   "models": ["text-embedding-3-small", "dall-e-3", "gpt-image-1"],
                   "prices": {"dall-e-3": {"per_image": DALLE_PER_IMAGE}}},
        "gem": {"type": "gemini", "base_url": url, "api_key": GEMINI_KEY, "catalog_provider": "google",
                "timeouts": timeouts, "models": ["gemini-embedding-001", "imagen-4.0-generate-001"],
                "prices": {"imagen-4.0-generate-001": {"per_image": IMAGEN_PER_IMAGE}}},
        "llama": {"type": "ollama", "base_url": url, "api_key": OLLAMA_KEY, "timeouts": timeouts,
                  "models": ["nomic-embed-text", "missing-embed"]},
        "llama-open": {"type": "ollama", "base_url": url, "api_key_required": False, "models": ["all-minilm"]},
    }
    gateway = Gateway(gateway_config(url, tmp_path / "embed.db", providers=providers,
                                     aliases={"embed": "text-embedding-3-small"})).start()
    yield gateway
    gateway.stop()


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


def f32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def b64_floats(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# -- embeddings ---------------------------------------------------------------------------------


def test_openai_embeddings_pass_through(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    fixture = json.loads(_file("openai_embeddings/response_two_inputs.json"))
    reply = sdk(gw).embeddings.create(model="text-embedding-3-small", input=["sunny day", "rainy day"],
                                      encoding_format="float")
    assert [d.embedding for d in reply.data] == [d["embedding"] for d in fixture["data"]]
    assert reply.usage.prompt_tokens == 12
    sent = fake[0].requests[-1]
    assert sent["path"] == "/v1/embeddings"
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["body"] == {"model": "text-embedding-3-small", "input": ["sunny day", "rainy day"],
                            "encoding_format": "float"}
    (row,) = gw.rows(1)
    assert (row["endpoint"], row["provider"], row["status"]) == ("embeddings", "openai", 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (12, 0, 0)
    assert row["cost_usd"] == pytest.approx(12 * CATALOG_EMBED_PRICE / 1e6, rel=1e-12)


def test_openai_embeddings_bytes_forwarded_and_alias_rewritten(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    raw = b'{"model":"text-embedding-3-small",  "input":"hi"}'
    r = httpx.post(gw.url + "/embeddings", content=raw, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200
    assert r.content == _file("openai_embeddings/response_two_inputs.json")  # the upstream's bytes
    assert fake[0].requests[-1]["raw"] == raw  # the client's bytes
    sdk(gw).embeddings.create(model="embed", input="hi")
    assert fake[0].requests[-1]["body"]["model"] == "text-embedding-3-small"


def test_gemini_embeddings_translated(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    reply = sdk(gw).embeddings.create(model="gemini-embedding-001", input=["abcdefgh", "abc"],
                                      encoding_format="float", dimensions=3)
    assert [d.embedding for d in reply.data] == [GEMINI_VECTOR[:3]] * 2
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.model == "gemini-embedding-001" and reply.object == "list"
    assert reply.usage.prompt_tokens == 3  # estimated: 8 chars → 2, 3 chars → 1
    sent = fake[0].requests[-1]
    assert sent["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent["headers"]["x-goog-api-key"] == GEMINI_KEY and GEMINI_KEY not in sent["query"]
    assert "authorization" not in sent["headers"]
    assert sent["body"] == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}, "outputDimensionality": 3}
        for t in ("abcdefgh", "abc")]}
    (row,) = gw.rows(1)
    assert (row["provider"], row["prompt_tokens"], row["usage_estimated"]) == ("gem", 3, 1)
    assert row["cost_usd"] == pytest.approx(3 * 0.15 / 1e6, rel=1e-12)  # catalog: google gemini-embedding-001


def test_gemini_embeddings_sdk_default_base64(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    """Without an explicit encoding_format the SDK asks for base64 and decodes it to floats itself."""
    reply = sdk(gw).embeddings.create(model="gemini-embedding-001", input="hello")
    assert fake[0].requests[-1]["path"].endswith(":batchEmbedContents")
    assert reply.data[0].embedding == GEMINI_VECTOR


def test_explicit_base64_is_little_endian_float32(gw: Gateway) -> None:
    """With encoding_format="base64" given, the SDK hands the string over undecoded."""
    client = sdk(gw)
    gem = client.embeddings.create(model="gemini-embedding-001", input=["x"], encoding_format="base64")
    assert isinstance(gem.data[0].embedding, str)
    assert b64_floats(gem.data[0].embedding) == GEMINI_VECTOR
    oll = client.embeddings.create(model="nomic-embed-text", input=["x", "y"], encoding_format="base64")
    assert [b64_floats(d.embedding) for d in oll.data] == [f32(OLLAMA_VECTOR)] * 2


def test_ollama_embeddings_translated(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    reply = sdk(gw).embeddings.create(model="nomic-embed-text", input="why is the sky blue?",
                                      encoding_format="float", dimensions=64)
    assert reply.data[0].embedding == OLLAMA_VECTOR and reply.usage.prompt_tokens == 7
    sent = fake[0].requests[-1]
    assert sent["path"] == "/api/embed"
    assert sent["body"] == {"model": "nomic-embed-text", "input": "why is the sky blue?", "dimensions": 64}
    assert sent["headers"]["authorization"] == f"Bearer {OLLAMA_KEY}"
    (row,) = gw.rows(1)
    assert (row["provider"], row["prompt_tokens"], row["usage_estimated"]) == ("llama", 7, 0)
    sdk(gw).embeddings.create(model="all-minilm", input=["a", "b"])
    sent = fake[0].requests[-1]
    assert sent["body"]["input"] == ["a", "b"] and "authorization" not in sent["headers"]


def test_native_embedding_errors(gw: Gateway) -> None:
    client = sdk(gw)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="gemini-embedding-001", input="#fail429")
    assert info.value.status_code == 429 and info.value.code == "resource_exhausted"
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="missing-embed", input="x")
    assert nf.value.code == "model_not_found" and "not found" in nf.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="nomic-embed-text", input=[[1, 2, 3]])
    assert bad.value.param == "input"
    rows = gw.rows(3)
    assert [r["status"] for r in rows] == [429, 404, 400]


# -- images -------------------------------------------------------------------------------------


def test_openai_images_pass_through_with_per_image_cost(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    fixture = json.loads(_file("openai_images/response_dalle_url.json"))
    reply = sdk(gw).images.generate(model="dall-e-3", prompt="a sea otter", n=2, size="1024x1024")
    assert [d.b64_json for d in reply.data] == [d["b64_json"] for d in fixture["data"]]
    assert reply.created == fixture["created"]
    sent = fake[0].requests[-1]
    assert sent["path"] == "/v1/images/generations"
    assert sent["body"] == {"model": "dall-e-3", "prompt": "a sea otter", "n": 2, "size": "1024x1024"}
    (row,) = gw.rows(1)
    assert (row["endpoint"], row["provider"], row["status"]) == ("images.generations", "openai", 200)
    assert row["cost_usd"] == pytest.approx(2 * DALLE_PER_IMAGE)  # two images returned


def test_openai_images_token_usage_priced_when_no_per_image(gw: Gateway) -> None:
    sdk(gw).images.generate(model="gpt-image-1", prompt="#usage")
    (row,) = gw.rows(1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (50, 50)
    assert row["cost_usd"] is None  # the bundled catalog has no token price for gpt-image-1


def test_openai_images_error_relayed(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gw).images.generate(model="gpt-image-1", prompt="#fail400", response_format="url")
    assert info.value.status_code == 400
    assert info.value.code == "unknown_parameter" and info.value.param == "response_format"
    assert info.value.body == json.loads(_file("openai_images/error_400_unknown_parameter.json"))["error"]
    (row,) = gw.rows(1)
    assert (row["status"], row["error_type"], row["cost_usd"]) == (400, "invalid_request_error", None)


def test_openai_images_stream_relayed(gw: Gateway) -> None:
    with httpx.stream("POST", gw.url + "/v1/images/generations",
                      json={"model": "gpt-image-1", "prompt": "x", "stream": True, "partial_images": 1},
                      headers={"authorization": f"Bearer {CLIENT_KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.read() == SSE_IMAGE
    (row,) = gw.rows(1)
    assert (row["status"], row["stream"]) == (200, 1)


def test_gemini_imagen_b64(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    reply = sdk(gw).images.generate(model="imagen-4.0-generate-001", prompt="a robot", n=3, size="1792x1024")
    assert [d.b64_json for d in reply.data] == [PNG_B64] * 3
    assert abs(reply.created - time.time()) < 60
    sent = fake[0].requests[-1]
    assert sent["path"] == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert sent["headers"]["x-goog-api-key"] == GEMINI_KEY and GEMINI_KEY not in sent["query"]
    assert sent["body"] == {"instances": [{"prompt": "a robot"}],
                            "parameters": {"sampleCount": 3, "aspectRatio": "16:9"}}
    (row,) = gw.rows(1)
    assert (row["provider"], row["status"]) == ("gem", 200)
    assert row["cost_usd"] == pytest.approx(3 * IMAGEN_PER_IMAGE)


def test_gemini_imagen_url_is_data_uri(gw: Gateway, fake: tuple[FakeUpstream, str]) -> None:
    reply = sdk(gw).images.generate(model="imagen-4.0-generate-001", prompt="a robot", response_format="url",
                                    size="512x512")
    assert [d.url for d in reply.data] == [f"data:image/png;base64,{PNG_B64}"]
    assert "aspectRatio" not in fake[0].requests[-1]["body"]["parameters"]  # no clean mapping: Imagen's default


def test_gemini_imagen_rejections(gw: Gateway) -> None:
    client = sdk(gw)
    with pytest.raises(openai.BadRequestError) as filtered:
        client.images.generate(model="imagen-4.0-generate-001", prompt="#filtered")
    assert filtered.value.code == "content_policy_violation"
    r = httpx.post(gw.url + "/v1/images/generations", json={"model": "imagen-4.0-generate-001", "prompt": "x",
                                                             "stream": True},
                   headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.images.generate(model="nomic-embed-text", prompt="x")
    assert unsupported.value.code == "unsupported_endpoint"
    assert [row["status"] for row in gw.rows(3)] == [400, 400, 400]
