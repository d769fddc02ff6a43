"""Embeddings and image generation in the native formats of Gemini and Ollama ⇄ OpenAI.

Pure translation, like the chat translators: no HTTP. OpenAI-compatible providers need none
of this (their bytes pass through); these functions build the native request from an OpenAI
``/v1/embeddings`` or ``/v1/images/generations`` body and turn the native answer into
OpenAI's shape.

* Gemini embeddings: ``POST /v1beta/models/{model}:batchEmbedContents`` (one request per
  input; ``dimensions`` → ``outputDimensionality``). Gemini reports no token usage for
  embeddings, so usage is estimated (~4 characters per token) and flagged as such.
* Ollama embeddings: ``POST /api/embed`` (``input`` string or list, ``dimensions``);
  ``prompt_eval_count`` is the prompt token count.
* Gemini Imagen: ``POST /v1beta/models/{model}:predict`` (``n`` → ``sampleCount``, ``size``
  → ``aspectRatio`` when it maps cleanly). Gemini returns image bytes, never a hosted URL,
  so ``response_format: "url"`` is answered with a ``data:`` URI.

``encoding_format: "base64"`` is produced here for translated providers: each vector as
base64 of its little-endian float32 values, which is what OpenAI returns and what the
OpenAI SDKs decode.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any
from urllib.parse import quote

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.wire import UpstreamCall

__all__ = [
    "IMAGE_ASPECT_RATIOS",
    "embed_texts",
    "encode_vector",
    "encoding_format",
    "estimate_tokens",
    "gemini_embed_request",
    "gemini_embed_response",
    "gemini_image_request",
    "gemini_image_response",
    "is_imagen",
    "ollama_embed_request",
    "ollama_embed_response",
]

OLLAMA_EMBED_PATH = "/api/embed"
# OpenAI sizes whose aspect ratio Imagen has as a preset; anything else keeps Imagen's default (1:1).
IMAGE_ASPECT_RATIOS = {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16"}


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _bad_upstream(provider: str, what: str) -> ProxyError:
    return ProxyError(502, f"Provider '{provider}' returned {what}.", type="upstream_error",
                      code="bad_upstream_response")


def embed_texts(body: dict[str, Any], provider_type: str) -> list[str]:
    """The ``input`` as a list of strings; token-array input only works with OpenAI-compatible servers."""
    value = body.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = value
    elif isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise bad_request(f"token-array input is not supported for {provider_type} providers; send text",
                          param="input", code="invalid_type")
    else:
        raise bad_request("input must be a non-empty string or array of strings", param="input",
                          code="invalid_type")
    if any(t == "" for t in texts):
        raise bad_request("input cannot contain an empty string", param="input")
    return texts


def encoding_format(body: dict[str, Any]) -> str:
    fmt = body.get("encoding_format")
    if fmt is None:
        return "float"
    if fmt not in ("float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'", param="encoding_format")
    return str(fmt)


def _dimensions(body: dict[str, Any]) -> int | None:
    dims = body.get("dimensions")
    if dims is None:
        return None
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise bad_request("dimensions must be a positive integer", param="dimensions", code="invalid_type")
    return dims


def encode_vector(values: list[float]) -> str:
    """OpenAI's base64 encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def estimate_tokens(texts: list[str]) -> int:
    """About four characters per token, at least one per input."""
    return sum(max(1, (len(t) + 3) // 4) for t in texts)


def _embedding_list(vectors: list[list[float]], model: str, fmt: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v) if fmt == "base64" else v}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _vectors(raw: Any, expected: int, provider: str) -> list[list[float]]:
    if not isinstance(raw, list) or len(raw) != expected or not all(
        isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in raw
    ):
        raise _bad_upstream(provider, f"an unreadable embeddings response (expected {expected} vectors)")
    return raw


def _gemini_name(model: str) -> str:
    return quote(model.removeprefix("models/"), safe="-._~")


# -- Gemini embeddings -------------------------------------------------------------------------


def gemini_embed_request(body: dict[str, Any], model: str, texts: list[str], *, api_key: str) -> UpstreamCall:
    """One ``batchEmbedContents`` call for all inputs. The key goes in a header: URLs get logged."""
    name = _gemini_name(model)
    dims = _dimensions(body)
    requests = []
    for text in texts:
        item: dict[str, Any] = {"model": f"models/{name}", "content": {"parts": [{"text": text}]}}
        if dims is not None:
            item["outputDimensionality"] = dims
        requests.append(item)
    return UpstreamCall(f"/v1beta/models/{name}:batchEmbedContents", orjson.dumps({"requests": requests}),
                        {"x-goog-api-key": api_key})


def gemini_embed_response(data: bytes, model: str, texts: list[str], fmt: str,
                          provider: str = "gemini") -> tuple[dict[str, Any], Usage]:
    """``{"embeddings": [{"values": [...]}]}`` → OpenAI list; usage is an estimate (Gemini sends none)."""
    obj = _loads(data)
    raw = obj.get("embeddings") if isinstance(obj, dict) else None
    vectors = _vectors([e.get("values") if isinstance(e, dict) else None for e in raw]
                       if isinstance(raw, list) else None, len(texts), provider)
    tokens = estimate_tokens(texts)
    return _embedding_list(vectors, model, fmt, tokens), Usage(prompt_tokens=tokens)


# -- Ollama embeddings -------------------------------------------------------------------------


def ollama_embed_request(body: dict[str, Any], model: str, texts: list[str], *, api_key: str | None) -> UpstreamCall:
    out: dict[str, Any] = {"model": model, "input": body["input"] if isinstance(body.get("input"), str) else texts}
    dims = _dimensions(body)
    if dims is not None:
        out["dimensions"] = dims
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return UpstreamCall(OLLAMA_EMBED_PATH, orjson.dumps(out), headers)


def ollama_embed_response(data: bytes, model: str, texts: list[str], fmt: str,
                          provider: str = "ollama") -> tuple[dict[str, Any], Usage, bool]:
    """``{"embeddings": [[...]], "prompt_eval_count"}`` → (OpenAI list, usage, whether usage is estimated)."""
    obj = _loads(data)
    vectors = _vectors(obj.get("embeddings") if isinstance(obj, dict) else None, len(texts), provider)
    count = obj.get("prompt_eval_count")
    estimated = not isinstance(count, int)
    tokens = estimate_tokens(texts) if estimated else count
    return _embedding_list(vectors, model, fmt, tokens), Usage(prompt_tokens=tokens), estimated


# -- Gemini Imagen -----------------------------------------------------------------------------


def is_imagen(model: str) -> bool:
    return model.removeprefix("models/").startswith("imagen")


def gemini_image_request(body: dict[str, Any], model: str, *, api_key: str) -> UpstreamCall:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("prompt must be a non-empty string", param="prompt")
    n = body.get("n")
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad_request("n must be a positive integer", param="n", code="invalid_type")
    fmt = body.get("response_format")
    if fmt not in (None, "b64_json", "url"):
        raise bad_request("response_format must be 'url' or 'b64_json'", param="response_format")
    parameters: dict[str, Any] = {"sampleCount": n}
    ratio = IMAGE_ASPECT_RATIOS.get(body.get("size"))
    if ratio is not None:
        parameters["aspectRatio"] = ratio
    out = {"instances": [{"prompt": prompt}], "parameters": parameters}
    return UpstreamCall(f"/v1beta/models/{_gemini_name(model)}:predict", orjson.dumps(out),
                        {"x-goog-api-key": api_key})


def gemini_image_response(data: bytes, response_format: str | None, provider: str = "gemini") -> dict[str, Any]:
    """``{"predictions": [{"bytesBase64Encoded", "mimeType"}]}`` → ``{"created", "data": [...]}``.

    ``url`` entries are ``data:`` URIs (Gemini hosts nothing). Predictions withheld by the
    safety filter (``raiFilteredReason``, no bytes) are dropped; when all were, the request
    fails as OpenAI fails it, with ``content_policy_violation``.
    """
    obj = _loads(data)
    predictions = obj.get("predictions") if isinstance(obj, dict) else None
    if predictions is None and isinstance(obj, dict):
        predictions = []  # Imagen answers {} when every image was filtered
    if not isinstance(predictions, list):
        raise _bad_upstream(provider, "an unreadable image response")
    images, reasons = [], []
    for p in predictions:
        if not isinstance(p, dict):
            continue
        b64 = p.get("bytesBase64Encoded")
        if isinstance(b64, str) and b64:
            if response_format == "url":
                images.append({"url": f"data:{p.get('mimeType') or 'image/png'};base64,{b64}"})
            else:
                images.append({"b64_json": b64})
        elif p.get("raiFilteredReason"):
            reasons.append(str(p["raiFilteredReason"]))
    if not images:
        message = reasons[0] if reasons else "No image was generated: the prompt or the images were filtered."
        raise ProxyError(400, message, code="content_policy_violation", param="prompt")
    return {"created": int(time.time()), "data": images}
