"""OpenAI's embeddings shape, for the formats that translate ``/v1/embeddings``.

``encoding_format: "base64"`` is produced here for translated providers: each vector as
base64 of its little-endian float32 values, which is what OpenAI returns and what the
OpenAI SDKs decode. OpenAI-compatible providers need none of this (their bytes pass through).
"""

from __future__ import annotations

import base64
import struct

from llm_proxy.core.errors import bad_request
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.wire import bad_upstream

__all__ = ["dimensions", "embed_texts", "embedding_list", "encode_vector", "encoding_format", "estimate_tokens",
           "vectors"]


def embed_texts(body: JSONObject, format_name: str) -> list[str]:
    """The ``input`` as a list of strings; token-array input only works with OpenAI-compatible servers."""
    value = body.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = value
    elif isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise bad_request(f"token-array input is not supported for {format_name} providers; send text",
                          param="input", code="invalid_type")
    else:
        raise bad_request("input must be a non-empty string or array of strings", param="input",
                          code="invalid_type")
    if any(t == "" for t in texts):
        raise bad_request("input cannot contain an empty string", param="input")
    return texts


def encoding_format(body: JSONObject) -> str:
    fmt = body.get("encoding_format")
    if fmt is None:
        return "float"
    if fmt not in ("float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'", param="encoding_format")
    return str(fmt)


def dimensions(body: JSONObject) -> int | None:
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


def embedding_list(vectors: list[list[float]], model: str, fmt: str, prompt_tokens: int) -> JSONObject:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v) if fmt == "base64" else v}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def vectors(raw: JSONValue, expected: int, provider: str) -> list[list[float]]:
    """``raw`` when it is ``expected`` numeric vectors; else the upstream answered nonsense."""
    if not isinstance(raw, list) or len(raw) != expected or not all(
        isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in raw
    ):
        raise bad_upstream(f"Provider '{provider}'", f"an unreadable embeddings response (expected {expected} vectors)")
    return raw
