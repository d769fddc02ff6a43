"""Gemini embeddings and Imagen image generation ⇄ OpenAI's ``/v1/embeddings`` and
``/v1/images/generations``. Pure translation, like the chat translator.

* Embeddings: ``POST /v1beta/models/{model}:batchEmbedContents`` (one request per input;
  ``dimensions`` → ``outputDimensionality``). Gemini reports no token usage for embeddings,
  so usage is estimated (~4 characters per token) and flagged as such.
* Imagen: ``POST /v1beta/models/{model}:predict`` (``n`` → ``sampleCount``, ``size`` →
  ``aspectRatio`` when it maps cleanly). Gemini returns image bytes, never a hosted URL, so
  ``response_format: "url"`` is answered with a ``data:`` URI.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.vectors import dimensions, embedding_list, estimate_tokens, vectors
from llm_proxy.core.wire import (
    Embedded,
    EmbeddingsCodec,
    ImagesCodec,
    UpstreamCall,
    bad_upstream,
    loads_or_none,
)

__all__ = ["EMBEDDINGS", "IMAGES", "IMAGE_ASPECT_RATIOS", "GeminiEmbeddings", "Imagen", "is_imagen", "model_path"]

# OpenAI sizes whose aspect ratio Imagen has as a preset; anything else keeps Imagen's default (1:1).
IMAGE_ASPECT_RATIOS = {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16"}


def model_path(model: str) -> str:
    """``/v1beta/models/{model}``, the name escaped for a URL path."""
    return "/v1beta/models/" + quote(model.removeprefix("models/"), safe="-._~")


class GeminiEmbeddings(EmbeddingsCodec):
    def build(self, body: JSONObject, model: str, texts: list[str], *, api_key: str) -> UpstreamCall:
        """One ``batchEmbedContents`` call for all inputs. The key goes in a header: URLs get logged."""
        path = model_path(model)
        dims = dimensions(body)
        requests = []
        for text in texts:
            item: JSONObject = {"model": "models/" + path.rsplit("/", 1)[1], "content": {"parts": [{"text": text}]}}
            if dims is not None:
                item["outputDimensionality"] = dims
            requests.append(item)
        return UpstreamCall(path + ":batchEmbedContents", orjson.dumps({"requests": requests}),
                            {"x-goog-api-key": api_key})

    def parse(self, data: bytes, model: str, texts: list[str], encoding: str, provider: str) -> Embedded:
        """``{"embeddings": [{"values": [...]}]}`` → OpenAI list; usage is an estimate (Gemini sends none)."""
        obj = loads_or_none(data)
        raw = obj.get("embeddings") if obj is not None else None
        found = vectors([e.get("values") if isinstance(e, dict) else None for e in raw]
                        if isinstance(raw, list) else None, len(texts), provider)
        tokens = estimate_tokens(texts)
        return Embedded(embedding_list(found, model, encoding, tokens), Usage(prompt_tokens=tokens), True)


def is_imagen(model: str) -> bool:
    return model.removeprefix("models/").startswith("imagen")


class Imagen(ImagesCodec):
    def unsupported(self, model: str) -> str | None:
        return None if is_imagen(model) else "with a non-Imagen model"

    def build(self, body: JSONObject, model: str, *, api_key: str) -> UpstreamCall:
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
        parameters: JSONObject = {"sampleCount": n}
        size = body.get("size")
        ratio = IMAGE_ASPECT_RATIOS.get(size) if isinstance(size, str) else None
        if ratio is not None:
            parameters["aspectRatio"] = ratio
        out = {"instances": [{"prompt": prompt}], "parameters": parameters}
        return UpstreamCall(model_path(model) + ":predict", orjson.dumps(out),
                            {"x-goog-api-key": api_key})

    def parse(self, data: bytes, response_format: str | None, provider: str) -> JSONObject:
        """``{"predictions": [{"bytesBase64Encoded", "mimeType"}]}`` → ``{"created", "data": [...]}``.

        ``url`` entries are ``data:`` URIs (Gemini hosts nothing). Predictions withheld by the
        safety filter (``raiFilteredReason``, no bytes) are dropped; when all were, the request
        fails as OpenAI fails it, with ``content_policy_violation``.
        """
        obj = loads_or_none(data)
        predictions = obj.get("predictions") if obj is not None else None
        if predictions is None and obj is not None:
            predictions = []  # Imagen answers {} when every image was filtered
        if not isinstance(predictions, list):
            raise bad_upstream(f"Provider '{provider}'", "an unreadable image response")
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


EMBEDDINGS = GeminiEmbeddings()
IMAGES = Imagen()
